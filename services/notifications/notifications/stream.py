"""Server-sent events: the caller's new in-app notifications as they are stored.

The stream polls the service's own database (no in-process state, so any api replica can
serve any caller), sends a heartbeat comment while idle and ends after ``max_s`` so a
gunicorn gthread worker gets its thread back; EventSource reconnects with
``Last-Event-ID`` and resumes where it stopped. Each poll looks back ``OVERLAP`` before
the newest notification already sent and skips ids it has sent, so a notification whose
transaction committed late (several workers) is still delivered; events carry the
notification id, so a client can drop the rare repeat after a reconnect.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select

from servicekit.db import Database
from servicekit.web import json_default

from .queries import FEED_COLUMNS, Caller, feed_condition
from .tables import notifications

OVERLAP = timedelta(seconds=5)


@dataclass(frozen=True)
class StreamConfig:
    poll_s: float = 1.0
    heartbeat_s: float = 15.0
    max_s: float = 300.0


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _parse_last_event_id(value: str | None) -> tuple[datetime, str] | None:
    if not value or "/" not in value:
        return None
    stamp, _, nid = value.partition("/")
    try:
        return _aware(datetime.fromisoformat(stamp)), nid
    except ValueError:
        return None


def _event(row: Any) -> str:
    created = _aware(row["created_at"])
    data = json.dumps({**dict(row), "created_at": created}, default=json_default)
    return f"id: {created.isoformat()}/{row['id']}\nevent: notification\ndata: {data}\n\n"


def events_for(db: Database, caller: Caller, config: StreamConfig,
               last_event_id: str | None = None) -> Iterator[str]:
    """The SSE body for ``caller``: ``retry`` hint, then notifications and heartbeats."""
    with db.transaction() as session:
        cond = feed_condition(session, caller)
        newest = (session.execute(select(func.max(notifications.c.created_at)).where(cond))
                  .scalar() if cond is not None else None)
    resume = _parse_last_event_id(last_event_id)
    cursor = resume[0] if resume else _aware(newest) if newest else datetime.now(UTC)
    sent: dict[str, datetime] = {resume[1]: cursor} if resume else {}
    if not resume and cond is not None:  # a fresh stream starts after what exists now
        with db.transaction() as session:
            for nid, created in session.execute(select(notifications.c.id,
                                                       notifications.c.created_at).where(
                    cond, notifications.c.created_at >= cursor - OVERLAP)):
                sent[nid] = _aware(created)
    yield "retry: 3000\n: stream open\n\n"
    started = last_beat = time.monotonic()
    while time.monotonic() - started < config.max_s:
        rows = _poll(db, cond, cursor - OVERLAP) if cond is not None else []
        for row in rows:
            if row["id"] in sent:
                continue
            sent[row["id"]] = _aware(row["created_at"])
            cursor = max(cursor, sent[row["id"]])
            last_beat = time.monotonic()
            yield _event(row)
        sent = {k: v for k, v in sent.items() if v >= cursor - OVERLAP}
        if time.monotonic() - last_beat >= config.heartbeat_s:
            last_beat = time.monotonic()
            yield ": heartbeat\n\n"
        time.sleep(config.poll_s)
    yield ": stream end, reconnect\n\n"


def _poll(db: Database, cond: Any, since: datetime) -> list[Any]:
    with db.transaction() as session:
        return list(session.execute(
            select(*FEED_COLUMNS).where(and_(cond, notifications.c.created_at >= since))
            .order_by(notifications.c.created_at, notifications.c.id).limit(200)).mappings())
