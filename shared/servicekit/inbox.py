"""Idempotent inbox: a consumer records each event id in the same transaction as its effect.

The primary key (consumer, event_id) rejects a duplicate; we never check-then-insert.
Events whose per-aggregate sequence is not newer than the last applied one are dropped.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import DateTime, bindparam, text
from sqlalchemy.orm import Session

from .db import upsert
from .events import Envelope


def claim(session: Session, consumer: str, env: Envelope) -> bool:
    """Try to take ``env`` for ``consumer``. False means: duplicate or stale, do nothing.

    Two statements (one on PostgreSQL: ``_claim_pg``) and no savepoint (``ON CONFLICT`` on
    PostgreSQL and SQLite alike), so a consumer can claim many events in one transaction. A
    False leaves the transaction usable; a stale event's id stays recorded, which only marks
    it as seen.
    """
    if session.get_bind().dialect.name == "postgresql":
        return bool(_claim_pg(session, consumer, [env]))
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
    """``claim`` of each of ``envs`` in order, in three statements however many there are
    (two on PostgreSQL, where the first two are one): one multi-row inbox insert (``ON
    CONFLICT DO NOTHING``); one upsert that creates the missing aggregate rows of the newly
    recorded events at sequence 0 (no event has sequence 0), locks them all in key order
    and returns their last sequences; one upsert of the newest accepted sequences. On
    PostgreSQL, when no two of the distinct events are of one aggregate (the usual poll),
    one statement in all: ``claim``'s, for all of them at once.

    The verdicts are those of calling ``claim`` on each event in turn: a repeated event id is
    a duplicate after its first occurrence, and an event is stale unless its sequence is
    newer than its aggregate's last one, counting earlier events of the same call. The rows
    stay locked until the transaction ends, so another consumer's transaction cannot move a
    sequence in between.
    """
    if not envs:
        return []
    first: dict[str, int] = {}
    for i, env in enumerate(envs):
        first.setdefault(env.id, i)
    unique = [envs[i] for i in first.values()]
    postgresql = session.get_bind().dialect.name == "postgresql"
    if postgresql and len({(env.source, env.subject) for env in unique}) == len(unique):
        newer = _claim_pg(session, consumer, unique)
        return [first[env.id] == i and (env.source, env.subject) in newer
                for i, env in enumerate(envs)]
    taken, last = (_take_pg if postgresql else _take)(session, consumer, unique)
    verdicts = [False] * len(envs)
    newest: dict[tuple[str, str], int] = {}
    for i, env in enumerate(envs):
        if first[env.id] != i or env.id not in taken:
            continue
        key = (env.source, env.subject)
        if env.sequence > last[key]:
            verdicts[i] = True
            last[key] = newest[key] = env.sequence
    if newest:
        (_advance_pg if postgresql else _advance)(session, consumer, sorted(newest.items()))
    return verdicts


# The kit's tables (``db.add_kit_tables``). Statements built once, bound per call: building
# and hashing a statement per claim cost more CPU than PostgreSQL spent running it. Rows
# travel as one JSON text (``json_to_recordset``), so the text does not grow with the rows
# (psycopg re-parses any statement of more than 50 parameters on every execution) and they
# are encoded by the json module's C encoder, not adapted value by value. They run on the
# session's connection: ``Session.execute`` adds ORM work a Core statement has no use for.
_TAKE_PG = text("""
WITH batch AS (
    SELECT * FROM json_to_recordset(CAST(:events AS json))
        AS e(event_id varchar, event_type varchar, source varchar, subject varchar)
), taken AS (
    INSERT INTO inbox (consumer, event_id, event_type, processed_at)
    SELECT :consumer, event_id, event_type, :now FROM batch
    ON CONFLICT DO NOTHING RETURNING event_id
), locked AS (
    INSERT INTO aggregate_sequence (consumer, source, subject, last_sequence)
    SELECT :consumer, source, subject, 0
    FROM (SELECT DISTINCT source, subject FROM batch JOIN taken USING (event_id)) AS k
    ORDER BY source COLLATE "C", subject COLLATE "C"
    ON CONFLICT (consumer, source, subject)
    DO UPDATE SET last_sequence = aggregate_sequence.last_sequence
    RETURNING source, subject, last_sequence
)
SELECT event_id, NULL, NULL FROM taken
UNION ALL SELECT source, subject, last_sequence FROM locked
""").bindparams(bindparam("now", type_=DateTime(timezone=True)))
_CLAIM_PG = text("""
WITH batch AS (
    SELECT * FROM json_to_recordset(CAST(:events AS json)) AS e(
        event_id varchar, event_type varchar, source varchar, subject varchar, sequence bigint)
), taken AS (
    INSERT INTO inbox (consumer, event_id, event_type, processed_at)
    SELECT :consumer, event_id, event_type, :now FROM batch
    ON CONFLICT DO NOTHING RETURNING event_id
)
INSERT INTO aggregate_sequence (consumer, source, subject, last_sequence)
SELECT :consumer, source, subject, sequence FROM batch JOIN taken USING (event_id)
ORDER BY source COLLATE "C", subject COLLATE "C"
ON CONFLICT (consumer, source, subject) DO UPDATE SET last_sequence = excluded.last_sequence
WHERE aggregate_sequence.last_sequence < excluded.last_sequence
RETURNING source, subject
""").bindparams(bindparam("now", type_=DateTime(timezone=True)))
_ADVANCE_PG = text("""
INSERT INTO aggregate_sequence (consumer, source, subject, last_sequence)
SELECT :consumer, source, subject, last_sequence FROM json_to_recordset(CAST(:rows AS json))
    AS r(source varchar, subject varchar, last_sequence bigint)
ON CONFLICT (consumer, source, subject) DO UPDATE SET last_sequence = excluded.last_sequence
WHERE aggregate_sequence.last_sequence < excluded.last_sequence
""")


def _claim_pg(session: Session, consumer: str, envs: list[Envelope]) -> set[tuple[str, str]]:
    """``claim`` of ``envs`` (distinct ids, no two of one aggregate) in one statement: the
    inbox insert, then for the events it recorded the upsert of their sequences where newer;
    returns the aggregates whose sequence moved, whose events are the ones taken. The
    upsert locks each of its rows, moved or not (``ON CONFLICT DO UPDATE ... WHERE``),
    in key order."""
    return {(source, subject) for source, subject in session.connection().execute(_CLAIM_PG, {
        "consumer": consumer, "now": datetime.now(UTC), "events": json.dumps(
            [{"event_id": env.id, "event_type": env.type, "source": env.source,
              "subject": env.subject, "sequence": env.sequence} for env in envs],
            separators=(",", ":"))})}


def _take_pg(session: Session, consumer: str, envs: list[Envelope]
             ) -> tuple[set[str], dict[tuple[str, str], int]]:
    """Record ``envs`` (distinct ids) in the inbox and lock the aggregate rows of those that
    were new, in one statement: (ids newly recorded, last sequence of their aggregates).
    The lock order is the key order (``COLLATE "C"``: code points, as Python sorts)."""
    rows = session.connection().execute(_TAKE_PG, {
        "consumer": consumer, "now": datetime.now(UTC), "events": json.dumps(
            [{"event_id": env.id, "event_type": env.type, "source": env.source,
              "subject": env.subject} for env in envs], separators=(",", ":"))}).all()
    taken = {a for a, _b, seq in rows if seq is None}
    return taken, {(a, b): seq for a, b, seq in rows if seq is not None}


def _advance_pg(session: Session, consumer: str,
                newest: list[tuple[tuple[str, str], int]]) -> None:
    session.connection().execute(_ADVANCE_PG, {"consumer": consumer, "rows": json.dumps(
        [{"source": source, "subject": subject, "last_sequence": seq}
         for (source, subject), seq in newest], separators=(",", ":"))})


def _take(session: Session, consumer: str, envs: list[Envelope]
          ) -> tuple[set[str], dict[tuple[str, str], int]]:
    """``_take_pg`` in two statements (SQLite): multi-row insert, then the locking upsert."""
    md = session.info["metadata"]
    inbox, seqs = md.tables["inbox"], md.tables["aggregate_sequence"]
    now = datetime.now(UTC)
    taken = set(session.execute(upsert(session, inbox).on_conflict_do_nothing()
                                .returning(inbox.c.event_id), [
        {"consumer": consumer, "event_id": env.id, "event_type": env.type, "processed_at": now}
        for env in envs]).scalars().all())
    keys = sorted({(env.source, env.subject) for env in envs if env.id in taken})
    if not keys:
        return taken, {}
    lock = upsert(session, seqs)
    last = session.execute(lock.on_conflict_do_update(
        index_elements=[seqs.c.consumer, seqs.c.source, seqs.c.subject],
        set_={"last_sequence": seqs.c.last_sequence},
    ).returning(seqs.c.source, seqs.c.subject, seqs.c.last_sequence), [
        {"consumer": consumer, "source": source, "subject": subject, "last_sequence": 0}
        for source, subject in keys]).all()
    return taken, {(source, subject): seq for source, subject, seq in last}


def _advance(session: Session, consumer: str,
             newest: list[tuple[tuple[str, str], int]]) -> None:
    seqs = session.info["metadata"].tables["aggregate_sequence"]
    stmt = upsert(session, seqs)
    # RETURNING makes it one multi-row statement on every driver (insertmanyvalues)
    session.execute(stmt.on_conflict_do_update(
        index_elements=[seqs.c.consumer, seqs.c.source, seqs.c.subject],
        set_={"last_sequence": stmt.excluded.last_sequence},
        where=seqs.c.last_sequence < stmt.excluded.last_sequence,
    ).returning(seqs.c.subject), [
        {"consumer": consumer, "source": source, "subject": subject, "last_sequence": seq}
        for (source, subject), seq in newest]).all()
