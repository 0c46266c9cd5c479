"""Idempotent inbox: a consumer records each event id in the same transaction as its effect.

The primary key (consumer, event_id) rejects a duplicate; we never check-then-insert.
Events whose per-aggregate sequence is not newer than the last applied one are dropped.
"""
from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.orm import Session

from .db import upsert
from .events import Envelope


def claim(session: Session, consumer: str, env: Envelope) -> bool:
    """Try to take ``env`` for ``consumer``. False means: duplicate or stale, do nothing.

    Two statements and no savepoint (``ON CONFLICT`` on PostgreSQL and SQLite alike), so a
    consumer can claim many events in one transaction. A False leaves the transaction usable;
    a stale event's id stays recorded, which only marks it as seen.
    """
    md = session.info["metadata"]
    inbox, seqs = md.tables["inbox"], md.tables["aggregate_sequence"]
    taken = session.execute(upsert(session, inbox).values(
        consumer=consumer, event_id=env.id, event_type=env.type,
        processed_at=datetime.now(UTC)).on_conflict_do_nothing()
        .returning(inbox.c.event_id)).first()
    if taken is None:
        return False
    stmt = upsert(session, seqs).values(consumer=consumer, source=env.source,
                                        subject=env.subject, last_sequence=env.sequence)
    stmt = stmt.on_conflict_do_update(
        index_elements=[seqs.c.consumer, seqs.c.source, seqs.c.subject],
        set_={"last_sequence": stmt.excluded.last_sequence},
        where=seqs.c.last_sequence < stmt.excluded.last_sequence)
    # RETURNING, not rowcount: an ORM session reports -1 rows for these statements
    return session.execute(stmt.returning(seqs.c.last_sequence)).first() is not None
