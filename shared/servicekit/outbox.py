"""Transactional outbox and its relay.

Handlers call :func:`emit` inside their unit of work: the event row commits or rolls back
with the state change. The relay publishes committed rows in id order and marks them sent
only after the broker acknowledged them (acks=all), so a crash between the two publishes a
row again (consumers deduplicate by event id) but never loses one.

On PostgreSQL the relay is woken by ``NOTIFY``: a statement-level trigger on the outbox
(installed idempotently when the relay starts) notifies at the commit of any transaction
that wrote outbox rows, whichever code wrote them, and the relay ``LISTEN``s; it still looks
once a second on its own. Where the trigger or the listening connection is unavailable (and
on SQLite) it polls every ``poll_interval_s``.

On PostgreSQL several relays can run side by side: each claims rows with
``FOR UPDATE SKIP LOCKED`` and leaves alone any key whose earlier unsent rows another relay
holds, which keeps per-aggregate order. SQLite (embedded mode) has one relay per file.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable

import psycopg
from kafka import KafkaProducer
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import Table, bindparam, func, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from . import events, logs
from .db import Database, upsert

log = logging.getLogger(__name__)

PUBLISHED = Counter("outbox_published_total", "Events published by the outbox relay", ["topic"])
PUBLISH_ERRORS = Counter("outbox_publish_errors_total", "Failed outbox publish attempts")
BACKLOG = Gauge("outbox_backlog", "Unsent outbox rows seen by the relay")
BACKLOG_REFRESH_S = 1.0
NOTIFIED_IDLE_POLL_S = 1.0  # how often a relay woken by NOTIFY still looks on its own
LISTEN_RETRY_S = 10.0  # a relay without its LISTEN connection tries again this often
RELAY_LAG = Histogram("outbox_relay_delay_seconds", "Commit-to-publish delay of outbox rows",
                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


def _tables(session: Session) -> tuple[Table, Table]:
    md = session.info["metadata"]
    return md.tables["outbox"], md.tables["event_sequence"]


_NEXT_SEQUENCE: dict[tuple[str, int], Any] = {}


def next_sequence(session: Session, subject: str) -> int:
    """Atomically take the next per-aggregate sequence number (row-locked until commit)."""
    _, seq = _tables(session)
    key = (session.get_bind().dialect.name, id(seq))
    stmt = _NEXT_SEQUENCE.get(key)
    if stmt is None:  # built once per table and dialect: every emit takes a sequence
        stmt = _NEXT_SEQUENCE[key] = upsert(session, seq).on_conflict_do_update(
            index_elements=[seq.c.subject], set_={"last_sequence": seq.c.last_sequence + 1}
        ).returning(seq.c.last_sequence)
    return int(session.execute(stmt, {"subject": subject, "last_sequence": 1}).scalar_one())


def emit(session: Session, event_type: str, *, subject: str, data: dict[str, Any],
         source: str) -> events.Envelope:
    """Write one public event to the outbox inside the caller's transaction."""
    env = events.new_event(
        event_type, subject=subject, sequence=next_sequence(session, subject), data=data,
        source=source, correlation_id=logs.correlation_id.get(),
        causation_id=logs.causation_id.get(),
    )
    add(session, env)
    return env


def emit_many(session: Session, event_type: str, items: list[tuple[str, dict[str, Any]]], *,
              source: str, validate_each: bool = True,
              causes: list[tuple[str | None, str | None]] | None = None
              ) -> list[events.Envelope]:
    """``emit`` for many events at once (bulk imports, consumer batches): two statements in
    all instead of two per event. A subject may have several events: they take consecutive
    sequences in the order given. ``causes``: each event's (correlation id, causation id), when the events of one call
    have different causes (a consumer batch); by default those of ``logs.correlation``.

    ``validate_each=False`` (data built by one trusted builder, e.g. a routing snapshot from
    checked domain objects): the first event is validated in full and the others are only
    serialised, provided serialising alone gives the first one exactly; else all are
    validated. Validation is most of the CPU of a bulk import.

    On PostgreSQL the sequences are taken by one statement whose one parameter is the
    subjects' event counts as a JSON object, and the rows go in by ``COPY`` (an executemany costs a
    statement execution per row on both sides); elsewhere an executemany each."""
    if not items:
        return []
    if causes is not None and len(causes) != len(items):
        raise ValueError("emit_many takes one (correlation, causation) per event")
    counts: dict[str, int] = {}
    for subject, _ in items:
        counts[subject] = counts.get(subject, 0) + 1
    postgresql = session.get_bind().dialect.name == "postgresql"
    last = _take_sequences_pg(session, counts) if postgresql else _take_sequences(
        session, counts)
    sequences = {subject: last[subject] - n + 1 for subject, n in counts.items()}  # the first
    envs: list[events.Envelope] = []
    trusted = False
    if causes is None:  # all caused by what the caller's ``logs.correlation`` names
        causes = [(logs.correlation_id.get(), logs.causation_id.get())] * len(items)
    for (subject, data), (correlation_id, causation_id) in zip(items, causes, strict=True):
        env = events.new_event(event_type, subject=subject, sequence=sequences[subject],
                               data=data, source=source, correlation_id=correlation_id,
                               causation_id=causation_id, trusted=trusted)
        sequences[subject] += 1
        if not envs and not validate_each:
            trusted = events.new_event(event_type, subject=subject, sequence=env.sequence,
                                       data=data, source=source, trusted=True).data == env.data
        envs.append(env)
    now = datetime.now(timezone.utc)
    if postgresql:
        _copy_rows(session, envs, now)
    else:
        outbox, _ = _tables(session)
        session.execute(outbox.insert(), [{**row_for(env), "created_at": now} for env in envs])
    return envs


def _take_sequences(session: Session, counts: dict[str, int]) -> dict[str, int]:
    """Advance each subject's sequence by its count; returns the last one taken of each."""
    _, seq = _tables(session)
    stmt = upsert(session, seq)
    stmt = stmt.on_conflict_do_update(
        index_elements=[seq.c.subject],
        set_={"last_sequence": seq.c.last_sequence + stmt.excluded.last_sequence}
    ).returning(seq.c.subject, seq.c.last_sequence)  # distinct subjects: any row order will
    # do, and then SQLAlchemy batches the upsert (ordered RETURNING sent one row at a time)
    taken = session.execute(stmt, [{"subject": s, "last_sequence": n}
                                   for s, n in counts.items()]).all()
    return {row.subject: int(row.last_sequence) for row in taken}


def _take_sequences_pg(session: Session, counts: dict[str, int]) -> dict[str, int]:
    """``_take_sequences`` in one statement: the same upsert as ``next_sequence``, its rows
    from one JSON object parameter (subject: count)."""
    _, seq = _tables(session)
    statement = text(
        f'INSERT INTO "{seq.name}" (subject, last_sequence) '
        "SELECT key, CAST(value AS integer) FROM json_each_text(CAST(:counts AS json)) "
        f'ON CONFLICT (subject) DO UPDATE SET last_sequence = "{seq.name}".last_sequence '
        "+ excluded.last_sequence RETURNING subject, last_sequence")
    taken = session.execute(statement, {"counts": json.dumps(counts)})
    return {subject: int(sequence) for subject, sequence in taken}


def _copy_rows(session: Session, envs: list[events.Envelope], now: datetime) -> None:
    """The outbox rows of ``envs`` (``row_for``) by ``COPY``, in the caller's transaction
    and in order (ids follow the row order, as the relay publishes them)."""
    outbox, _ = _tables(session)
    raw = session.connection().connection.driver_connection
    statement = (f'COPY "{outbox.name}" (event_id, topic, key, event_type, payload, headers, '
                 "created_at) FROM STDIN")
    try:
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            for env in envs:
                row = row_for(env)
                copy.write_row((row["event_id"], row["topic"], row["key"], row["event_type"],
                                row["payload"], json.dumps(row["headers"]), now))
    except psycopg.Error as exc:  # as SQLAlchemy would raise it: the caller rolls back
        raise DBAPIError(statement, None, exc) from exc


def row_for(env: events.Envelope) -> dict[str, Any]:
    """The outbox row of ``env``, ``created_at`` aside (every writer of the outbox uses it)."""
    return {"event_id": env.id, "topic": env.topic, "key": env.subject, "event_type": env.type,
            "payload": events.encode(env),
            "headers": [[k, v.decode()] for k, v in events.headers_for(env, None)]}


def add(session: Session, env: events.Envelope) -> None:
    outbox, _ = _tables(session)
    session.execute(outbox.insert(), {**row_for(env), "created_at": datetime.now(timezone.utc)})


class OutboxRelay:
    """Publishes committed outbox rows; run one or more per service."""

    def __init__(self, db: Database, producer: KafkaProducer, *, batch_size: int = 200,
                 poll_interval_s: float = 0.01, send_timeout_s: float = 30.0):
        self.db = db
        self.producer = producer
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.send_timeout_s = send_timeout_s
        self.outbox: Table = db.metadata.tables["outbox"]
        self._postgresql = db.engine.dialect.name == "postgresql"
        self._claim_sql, self._sent_sql, self._failed_sql = _relay_statements(
            self.outbox, self._postgresql)
        # Test hook: called after the broker acknowledged and before rows are marked sent.
        self.after_send: Callable[[list[int]], None] | None = None
        self._held_back = False  # last claim skipped rows behind another relay's
        self._waker: _Waker | None = None

    def run(self, stop: threading.Event) -> None:
        try:
            self._run(stop)
        finally:
            if self._waker is not None:
                self._waker.close()
                self._waker = None

    def _run(self, stop: threading.Event) -> None:
        failures = 0
        next_gauge = next_listen = 0.0
        while not stop.is_set():
            if self._postgresql and self._waker is None and time.monotonic() >= next_listen:
                self._waker = _Waker.start(self.db, self.outbox.name)
                next_listen = time.monotonic() + LISTEN_RETRY_S
            if time.monotonic() >= next_gauge:  # the whole backlog, not only this batch
                self.refresh_backlog()
                next_gauge = time.monotonic() + BACKLOG_REFRESH_S
            try:
                sent = self.run_once()
                failures = 0
            except Exception:
                failures += 1
                PUBLISH_ERRORS.inc()
                log.exception("outbox relay round failed", extra=logs.log_fields(attempt=failures))
                stop.wait(min(5.0, 0.1 * 2 ** min(failures, 6)))
                continue
            if sent == 0:
                if self._waker is not None and not self._held_back:
                    if not self._waker.wait(NOTIFIED_IDLE_POLL_S, stop):
                        self._waker = None  # connection lost: poll until listening again
                else:  # rows other relays hold back are released without a NOTIFY
                    stop.wait(self.poll_interval_s)

    def refresh_backlog(self) -> None:
        try:
            BACKLOG.set(backlog(self.db))
        except Exception:  # the relay round reports database trouble
            log.debug("outbox backlog not measured", exc_info=True)

    def run_once(self) -> int:
        """Claim, publish and mark one batch. Returns how many rows were published."""
        with self.db.uow() as uow:
            rows = self._claim(uow.session)
            if not rows:
                BACKLOG.set(0)
                return 0
            done = self._publish(rows)
            if self.after_send is not None:
                self.after_send(done)
            if done:
                uow.session.execute(self._sent_sql, {"ids": done,
                                                     "now": datetime.now(timezone.utc)})
            sent = set(done)
            failed = [r.id for r in rows if r.id not in sent]
            if failed:
                uow.session.execute(self._failed_sql, {"ids": failed})
            uow.commit()
        return len(done)

    def _claim(self, session: Session) -> list[Any]:
        rows = list(session.execute(self._claim_sql, {"n": self.batch_size}))
        if not self._postgresql:
            return rows
        # Keep per-key order: skip keys whose older unsent rows are claimed by another relay
        # (each row comes with its key's oldest unsent id, read in the same statement).
        first_mine: dict[str, int] = {}
        for r in rows:
            first_mine.setdefault(r.key, r.id)
        mine = [r for r in rows if r.oldest >= first_mine[r.key]]
        self._held_back = len(mine) < len(rows)
        return mine

    def _publish(self, rows: list[Any]) -> list[int]:
        futures = []
        for r in rows:
            headers = [(k, v.encode()) for k, v in r.headers]
            futures.append((r, self.producer.send(r.topic, key=r.key.encode(), value=r.payload,
                                                  headers=headers)))
        self.producer.flush(timeout=self.send_timeout_s)
        done: list[int] = []
        broken: set[str] = set()
        now = datetime.now(timezone.utc)
        for r, fut in futures:
            ok = fut.is_done and fut.succeeded()
            if ok and r.key not in broken:
                done.append(r.id)
                PUBLISHED.labels(r.topic).inc()
                created = r.created_at if r.created_at.tzinfo else r.created_at.replace(
                    tzinfo=timezone.utc)
                RELAY_LAG.observe(max(0.0, (now - created).total_seconds()))
            else:
                # An older event of this key failed: later ones wait, so order is kept.
                broken.add(r.key)
        if broken:
            PUBLISH_ERRORS.inc()
            log.warning("outbox publish incomplete", extra=logs.log_fields(failed_keys=len(broken)))
        return done


def _relay_statements(o: Table, postgresql: bool) -> tuple[Any, Any, Any]:
    """The relay's three statements, built once (the relay runs them every round): claim the
    oldest unsent rows, mark rows sent, count a failed attempt. On PostgreSQL the claim locks
    rows ``FOR UPDATE SKIP LOCKED`` and returns with each row the oldest unsent id of its
    key (other relays' locked rows included), read in the same statement and snapshot."""
    ids = bindparam("ids", expanding=True)
    sent = update(o).where(o.c.id.in_(ids)).values(sent_at=bindparam("now"))
    failed = update(o).where(o.c.id.in_(ids)).values(attempts=o.c.attempts + 1,
                                                     last_error="publish failed")
    claim = (select(o.c.id, o.c.topic, o.c.key, o.c.payload, o.c.headers, o.c.created_at)
             .where(o.c.sent_at.is_(None)).order_by(o.c.id).limit(bindparam("n")))
    if postgresql:
        claimed = claim.with_for_update(skip_locked=True).cte("claimed")
        other = o.alias("unsent")
        oldest = (select(func.min(other.c.id))
                  .where(other.c.key == claimed.c.key, other.c.sent_at.is_(None))
                  .scalar_subquery())
        claim = select(claimed, oldest.label("oldest")).order_by(claimed.c.id)
    return claim, sent, failed


class _Waker:
    """A dedicated autocommit connection that LISTENs for the outbox trigger's NOTIFY."""

    CHANNEL = "outbox_rows"

    def __init__(self, conn: psycopg.Connection[Any]):
        self.conn = conn

    @classmethod
    def start(cls, db: Database, table: str) -> _Waker | None:
        """Install the trigger (idempotent) and LISTEN; None where that cannot be done."""
        if db.engine.dialect.name != "postgresql":
            return None
        try:
            install_notify_trigger(db, table)
            raw = db.engine.raw_connection()
        except Exception:  # e.g. no right to create triggers: polling still works
            log.warning("outbox NOTIFY unavailable; the relay polls", exc_info=True)
            return None
        conn = raw.driver_connection  # the engine's connect arguments, out of its pool
        raw.detach()
        try:
            conn.autocommit = True
            conn.execute(f'LISTEN "{cls.CHANNEL}"')
        except Exception:
            log.warning("outbox LISTEN failed; the relay polls", exc_info=True)
            conn.close()
            return None
        return cls(conn)

    def wait(self, timeout_s: float, stop: threading.Event) -> bool:
        """Return after a NOTIFY (pending ones drained), ``timeout_s`` or a stop (within
        0.25 s); False if the connection failed (the caller polls instead)."""
        deadline = time.monotonic() + timeout_s
        try:
            while not stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return True
                if any(True for _ in self.conn.notifies(timeout=min(left, 0.25), stop_after=1)):
                    for _ in self.conn.notifies(timeout=0.0):  # one round serves them all
                        pass
                    return True
            return True
        except Exception:
            log.warning("outbox LISTEN connection lost; the relay polls", exc_info=True)
            self.close()
            return False

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            log.debug("closing the LISTEN connection failed", exc_info=True)


def install_notify_trigger(db: Database, table: str) -> None:
    """The statement-level trigger that NOTIFYs the relays when outbox rows commit (one
    notification per transaction: PostgreSQL folds identical ones). Idempotent; an advisory
    lock keeps relays that start together from replacing it at the same time."""
    function = f"{table}_notify_relay"
    with db.engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:f))"), {"f": function})
        conn.execute(text(
            f'CREATE OR REPLACE FUNCTION "{function}"() RETURNS trigger LANGUAGE plpgsql AS '
            f"$$ BEGIN PERFORM pg_notify('{_Waker.CHANNEL}', ''); RETURN NULL; END $$"))
        conn.execute(text(
            f'CREATE OR REPLACE TRIGGER "{function}" AFTER INSERT ON "{table}" '
            f'FOR EACH STATEMENT EXECUTE FUNCTION "{function}"()'))


def backlog(db: Database) -> int:
    o = db.metadata.tables["outbox"]
    with db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(o.c.sent_at.is_(None))).scalar_one())

