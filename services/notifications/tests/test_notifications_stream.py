"""GET /v1/stream (server-sent events) served by the real api process under gunicorn
gthread: live notifications, heartbeats, bearer auth, resume with Last-Event-ID."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from notifications_fixtures import ORG, envelope, offer, status_changed
from notifications_servers import free_port

from notifications import bootstrap, handlers
from notifications.tables import metadata
from servicekit import events
from servicekit.auth import mint_dev_token
from servicekit.db import Database, run_migrations
from servicekit.settings import Settings
from servicekit.testing import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def served(make_settings: Callable[..., Settings]) -> Iterator[tuple[Settings, str, Database]]:
    port = free_port()
    settings = make_settings("notifications", NOTIFICATIONS_PORT=str(port),
                             STREAM_POLL_MS="100", STREAM_HEARTBEAT_S="1", STREAM_MAX_S="30",
                             WEB_THREADS="4")
    run_migrations(settings.database_url, bootstrap.MIGRATIONS)
    env = {**os.environ, **{k: v for k, v in settings.values.items() if v}}
    proc = subprocess.Popen([sys.executable, "-m", "notifications", "api"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    db = Database(settings.database_url, metadata)
    try:
        wait_for(lambda: _healthy(base), timeout=30, message="api to start")
        yield settings, base, db
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        db.dispose()


def _healthy(base: str) -> bool:
    try:
        return requests.get(f"{base}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _listen(base: str, token: str, last_event_id: str | None = None
            ) -> tuple[queue.Queue[str], requests.Response]:
    """Open the stream; a thread puts each complete SSE block (or comment) on a queue."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    resp = requests.get(f"{base}/v1/stream", headers=headers, stream=True, timeout=10)
    blocks: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        buf: list[str] = []
        try:
            for line in resp.iter_lines(decode_unicode=True):
                if line == "":
                    blocks.put("\n".join(buf))
                    buf = []
                else:
                    buf.append(line)
        except (requests.RequestException, AttributeError, ValueError):
            pass

    threading.Thread(target=pump, daemon=True).start()
    return blocks, resp


def _next_event(blocks: queue.Queue[str], timeout: float = 10) -> dict[str, Any]:
    while True:
        block = blocks.get(timeout=timeout)
        fields = dict(line.split(": ", 1) for line in block.splitlines()
                      if not line.startswith(":") and ": " in line)
        if fields.get("event") == "notification":
            return {"id": fields["id"], "data": json.loads(fields["data"])}


def _offer(db: Database) -> events.Envelope:
    env = envelope(events.REFERRAL_STATUS_CHANGED,
                   status_changed(to_status="offered", offer_=offer(org=ORG)))
    with db.transaction() as session:
        handlers.on_referral_event(session, env)
    return env


def test_stream_pushes_new_notifications_and_heartbeats_under_gunicorn(served: Any) -> None:
    settings, base, db = served
    token = mint_dev_token(settings, sub="staff-1", role="provider", org=ORG)
    other = mint_dev_token(settings, sub="staff-9", role="provider", org="org-other")
    blocks, resp = _listen(base, token)
    their_blocks, theirs = _listen(base, other)
    try:
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        # the feed answers while two streams hold threads
        feed = requests.get(f"{base}/v1/notifications",
                            headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert feed.status_code == 200
        env = _offer(db)
        got = _next_event(blocks)
        assert got["data"]["referral_id"] == env.subject
        assert got["data"]["kind"] == "offer_made"
        wait_for(lambda: any(b.startswith(": heartbeat") for b in _drain(their_blocks)),
                 timeout=10, message="heartbeat on the idle stream")
        assert all("notification" not in b for b in _drain(their_blocks))
    finally:
        resp.close()
        theirs.close()
    resumed, again = _listen(base, token, last_event_id=got["id"])
    try:
        later = _offer(db)
        assert _next_event(resumed)["data"]["referral_id"] == later.subject  # not the old one
    finally:
        again.close()


def _drain(blocks: queue.Queue[str]) -> list[str]:
    out = []
    while not blocks.empty():
        out.append(blocks.get_nowait())
    return out


def test_stream_needs_a_bearer_token_and_refuses_unknown_parameters(served: Any) -> None:
    settings, base, _db = served
    assert requests.get(f"{base}/v1/stream", timeout=5).status_code == 401
    token = mint_dev_token(settings, sub="staff-1", role="provider", org=ORG)
    bad = requests.get(f"{base}/v1/stream?since=yesterday", timeout=5,
                       headers={"Authorization": f"Bearer {token}"})
    assert bad.status_code == 422
    assert bad.headers["Content-Type"].startswith("application/problem+json")
