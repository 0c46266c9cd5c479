"""Idempotent inbox: a consumer records each event id in the same transaction as its effect.

The primary key (consumer, event_id) rejects a duplicate; we never check-then-insert.
Events whose per-aggregate sequence is not newer than the last applied one are dropped.
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import and_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .events import Envelope


def claim(session: Session, consumer: str, env: Envelope) -> bool:
    """Try to take ``env`` for ``consumer``. False means: duplicate or stale, do nothing.

    On False the caller must roll back: the failed insert may have aborted the transaction.
    """
    md = session.info["metadata"]
    inbox, seqs = md.tables["inbox"], md.tables["aggregate_sequence"]
    try:
        with session.begin_nested():
            session.execute(inbox.insert().values(
                consumer=consumer, event_id=env.id, event_type=env.type,
                processed_at=datetime.now(timezone.utc)))
    except IntegrityError:
        return False
    key = and_(seqs.c.consumer == consumer, seqs.c.source == env.source,
               seqs.c.subject == env.subject)
    advanced = session.execute(update(seqs).where(key, seqs.c.last_sequence < env.sequence)
                               .values(last_sequence=env.sequence)).rowcount
    if advanced:
        return True
    try:
        with session.begin_nested():
            session.execute(seqs.insert().values(consumer=consumer, source=env.source,
                                                 subject=env.subject, last_sequence=env.sequence))
    except IntegrityError:
        return False  # a row exists with a sequence >= this one: stale event
    return True
