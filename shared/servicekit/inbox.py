"""Idempotent inbox: a consumer records each event id in the same transaction as its effect.

The primary key (consumer, event_id) rejects a duplicate; we never check-then-insert.
Events whose per-aggregate sequence is not newer than the last applied one are dropped.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Table, Text, bindparam, cast, column, func, select
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


def claim_many(session: Session, consumer: str, envs: Sequence[Envelope]) -> list[bool]:
    """``claim`` of each of ``envs`` in order, in three statements however many there are:
    one multi-row inbox insert (``ON CONFLICT DO NOTHING``); one upsert that creates the
    missing aggregate rows at sequence 0 (no event has sequence 0), locks them all and
    returns their last sequences; one upsert of the newest accepted sequences.

    The verdicts are those of calling ``claim`` on each event in turn: a repeated event id is
    a duplicate after its first occurrence, and an event is stale unless its sequence is
    newer than its aggregate's last one, counting earlier events of the same call. The rows
    stay locked until the transaction ends, so another consumer's transaction cannot move a
    sequence in between.
    """
    if not envs:
        return []
    md = session.info["metadata"]
    inbox, seqs = md.tables["inbox"], md.tables["aggregate_sequence"]
    now = datetime.now(UTC)
    first: dict[str, int] = {}
    for i, env in enumerate(envs):
        first.setdefault(env.id, i)
    insert, rows = _insert_rows(session, inbox, [
        {"consumer": consumer, "event_id": env.id, "event_type": env.type, "processed_at": now}
        for i, env in enumerate(envs) if first[env.id] == i])
    taken = set(session.execute(
        insert.on_conflict_do_nothing().returning(inbox.c.event_id), rows).scalars().all())
    fresh = [i for i, env in enumerate(envs) if env.id in taken and first[env.id] == i]
    verdicts = [False] * len(envs)
    if not fresh:
        return verdicts
    keys = sorted({(envs[i].source, envs[i].subject) for i in fresh})  # one lock order
    index = [seqs.c.consumer, seqs.c.source, seqs.c.subject]
    lock, rows = _insert_rows(session, seqs, [
        {"consumer": consumer, "source": source, "subject": subject, "last_sequence": 0}
        for source, subject in keys])
    last = {(source, subject): seq for source, subject, seq in session.execute(
        lock.on_conflict_do_update(index_elements=index,
                                   set_={"last_sequence": seqs.c.last_sequence})
        .returning(seqs.c.source, seqs.c.subject, seqs.c.last_sequence), rows).all()}
    newest: dict[tuple[str, str], int] = {}
    for i in fresh:
        env = envs[i]
        key = (env.source, env.subject)
        if env.sequence > last[key]:
            verdicts[i] = True
            last[key] = newest[key] = env.sequence
    if newest:
        stmt, rows = _insert_rows(session, seqs, [
            {"consumer": consumer, "source": source, "subject": subject, "last_sequence": seq}
            for (source, subject), seq in sorted(newest.items())])
        # RETURNING makes it one multi-row statement on every driver (insertmanyvalues)
        session.execute(stmt.on_conflict_do_update(
            index_elements=index, set_={"last_sequence": stmt.excluded.last_sequence},
            where=seqs.c.last_sequence < stmt.excluded.last_sequence,
        ).returning(seqs.c.subject), rows).all()
    return verdicts


def _insert_rows(session: Session, table: Table, rows: list[dict[str, Any]]
                 ) -> tuple[Any, list[dict[str, Any]] | None]:
    """An ``INSERT`` (offering ``ON CONFLICT``) of ``rows`` and the parameters to execute it
    with. On PostgreSQL ``INSERT ... SELECT * FROM json_to_recordset(:rows)``: one JSON
    text parameter, so the statement's text does not grow with the rows (psycopg re-parses
    any statement of more than 50 parameters on every execution) and the rows are encoded by
    the json module's C encoder, not adapted value by value. Elsewhere a multi-row insert."""
    stmt = upsert(session, table)
    if session.get_bind().dialect.name != "postgresql":
        return stmt, rows
    names = list(rows[0])
    source = func.json_to_recordset(cast(bindparam(
        "rows", json.dumps(rows, default=_json_time, separators=(",", ":")), type_=Text),
        JSON)).table_valued(*[column(name, table.c[name].type) for name in names]
                            ).render_derived(with_types=True)
    return stmt.from_select(names, select(*source.c)), None


def _json_time(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot pass {type(value).__name__} through JSON")
