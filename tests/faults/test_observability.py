"""Observability of the real processes: /metrics on every api and every worker, and one
correlation id followed through the JSON logs of all four services.

A referral touches intake (api, worker), matching and notifications; a directory change
touches provider-registry and then every consumer of provider.events. Both are sent with
an X-Correlation-ID header, and each service's log must show that id on the lines of the
events it handled for them.
"""
from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from servicekit import demo
from servicekit.auth import mint_dev_token
from servicekit.provisioning import prepare
from servicekit.settings import SERVICE_INFO, SERVICE_MODULES, Settings
from servicekit.stack import Stack, base_env, start_stack
from servicekit.testing import Infrastructure, wait_for

from .harness import REFERRAL

pytestmark = pytest.mark.e2e

OFFSET = 100  # WORKER_METRICS_PORT_OFFSET


def _free_pair() -> int:
    """A port p with p + OFFSET also free (the worker's metrics port)."""
    for _ in range(200):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            if port + OFFSET > 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + OFFSET))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair")


@pytest.fixture(scope="module")
def stack(infra: Infrastructure, stack_kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    var = tmp_path_factory.mktemp("observability")
    dbs = {service: infra.new_database(service) for service in SERVICE_MODULES}
    prepare(dbs)
    env = base_env(var / "var", stack_kafka, dbs)
    env.update(LOG_LEVEL="INFO", WORKER_METRICS_PORT_OFFSET=str(OFFSET))
    for service in SERVICE_MODULES:
        env[f"{SERVICE_INFO[service][0]}_PORT"] = str(_free_pair())
    running = start_stack(env, var / "logs", timeout=180)
    yield running
    running.stop_all()


def _headers(stack: Stack, role: str, sub: str, corr: str, **claims: Any) -> dict[str, str]:
    token = mint_dev_token(Settings.from_env("cli", stack.env), sub=sub, role=role, **claims)
    return {"Authorization": f"Bearer {token}", "X-Correlation-ID": corr}


def _lines(stack: Stack, process: str, corr: str) -> list[dict[str, Any]]:
    out = []
    for raw in (stack.log_dir / f"{process}.log").read_text(errors="replace").splitlines():
        if corr in raw and raw.startswith("{"):
            out.append(json.loads(raw))
    return out


def _handled(stack: Stack, process: str, corr: str) -> set[str]:
    return {line["event_type"] for line in _lines(stack, process, corr)
            if line.get("msg") == "event handled" and line.get("correlation_id") == corr}


def test_one_referral_is_followed_across_services_by_its_correlation_id(stack: Stack) -> None:
    corr = "trace-" + uuid.uuid4().hex
    officer = _headers(stack, "officer", "officer-trace", corr, agency=demo.AGENCY)
    resp = requests.post(stack.urls["referral-intake"] + "/v1/referrals", json=REFERRAL,
                         headers={**officer, "Idempotency-Key": str(uuid.uuid4())}, timeout=10)
    assert resp.status_code == 201 and resp.headers["X-Correlation-ID"] == corr

    def followed() -> bool:
        return (bool(_handled(stack, "matching-worker", corr))
                and bool(_handled(stack, "referral-intake-worker", corr))
                and bool(_handled(stack, "notifications-worker", corr)))

    wait_for(followed, timeout=60, interval=0.5, message="the referral in every service's log")
    api = _lines(stack, "referral-intake-api", corr)
    assert any(line.get("msg") == "request" and line.get("status") == 201 for line in api)
    assert "referral.submitted" in _handled(stack, "matching-worker", corr)
    assert _handled(stack, "referral-intake-worker", corr) & {"routing.proposed",
                                                              "routing.exhausted"}
    assert _handled(stack, "notifications-worker", corr) & {"referral.status_changed",
                                                            "referral.submitted"}


def test_a_directory_change_is_followed_from_registry_to_its_consumers(stack: Stack) -> None:
    corr = "trace-" + uuid.uuid4().hex
    admin = _headers(stack, "admin", "admin-trace", corr)
    resp = requests.put(
        f"{stack.urls['provider-registry']}/v1/services/{demo.DEMO_SERVICE2_ID}/capacity",
        json={"maximum": 25, "accepting": True}, headers=admin, timeout=10)
    assert resp.status_code == 200, resp.text
    assert _lines(stack, "provider-registry-api", corr)

    def followed() -> bool:
        return all(_handled(stack, p, corr) for p in (
            "matching-worker", "notifications-worker", "referral-intake-worker"))

    wait_for(followed, timeout=60, interval=0.5, message="the change in every consumer's log")


def _scrape(url: str) -> str:
    resp = requests.get(url, timeout=5)
    assert resp.status_code == 200, url
    return resp.text


def test_every_api_and_worker_serves_metrics(stack: Stack) -> None:
    for name in SERVICE_MODULES:  # the four services (the console is issue 7's own)
        text = _scrape(stack.urls[name] + "/metrics")
        assert "http_request_duration_seconds_bucket" in text, name
    for service in SERVICE_MODULES:
        port = int(stack.env[f"{SERVICE_INFO[service][0]}_PORT"]) + OFFSET
        text = wait_for(lambda p=port: _try(f"http://127.0.0.1:{p}/metrics"), timeout=30,
                        message=f"{service} worker metrics")
        for metric in ("consumer_dead_letters_total", "consumer_processing_seconds",
                       "outbox_backlog", "consumer_lag"):
            assert f"# TYPE {metric}" in text, (service, metric)
        if service != "provider-registry":  # the registry's worker consumes nothing yet
            assert "consumer_processing_seconds_bucket{" in text, service
            assert "consumer_lag{" in text, service


def _try(url: str) -> str | None:
    try:
        resp = requests.get(url, timeout=2)
    except requests.RequestException:
        return None
    return resp.text if resp.ok else None
