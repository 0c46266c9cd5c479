"""The consumer runner: at-least-once delivery made effectively-once by the inbox.

For each record: decode and upcast the envelope, then in ONE database transaction claim the
event in the inbox and run the handler; commit the transaction; only then commit the offset.
Consecutive records of a poll share that transaction (up to ``batch_size``): their events are
claimed together (``inbox.claim_many``) and a handler offering ``handle_many`` (see
:class:`BatchHandler`) takes each run of its consecutive events at once.
A failure is retried with backoff a bounded number of times and then dead-lettered with the
error and the original topic/partition/offset in headers; undecodable records and unknown
major versions are dead-lettered at once. If dead-letters come faster than
``dlq_max_per_minute`` the consumer stops (the cause is usually infrastructure, not data)
without committing, so nothing is lost. Offsets are committed on partition revocation and
on a graceful stop (SIGTERM).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata
from marshmallow import ValidationError
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy.orm import Session

from . import events, inbox, logs
from .db import Database, is_unavailable

log = logging.getLogger(__name__)

Handler = Callable[[Session, events.Envelope], None]


class BatchHandler(Protocol):
    """A handler that can also take several events at once (optional; duck-typed).

    In a batch the runner passes ``handle_many`` each run of consecutive claimed events
    that this handler handles (an event of another handler in between ends a run, so
    effects keep the events' order); ``handle_many(session, envs)`` must leave what
    ``handler(session, env)`` for each event in turn would. Alone, or when a batch is
    retried one record at a time, an event goes through ``__call__``.
    """

    def __call__(self, session: Session, env: events.Envelope) -> None: ...

    def handle_many(self, session: Session, envs: list[events.Envelope]) -> None: ...


PROCESSED = Counter("consumer_messages_total", "Messages handled by consumers",
                    ["consumer", "result"])
DEAD_LETTERED = Counter("consumer_dead_letters_total", "Messages sent to a dead-letter topic",
                        ["consumer", "topic"])
LAG = Gauge("consumer_lag", "Messages not yet handled: partition end minus the consumer's position",
            ["consumer", "topic", "partition"])
PROCESSING = Histogram("consumer_processing_seconds",
                       "Time to handle one message (decode, inbox, handler, database commit)",
                       ["consumer"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                              0.25, 0.5, 1, 2.5, 5, 10))
LAG_REFRESH_S = 1.0


class PermanentError(Exception):
    """A handler's verdict that retrying cannot help (bad data, broken invariant)."""


class ConsumerHalted(RuntimeError):
    """Raised when the dead-letter rate cap trips: better stopped than dead-lettering all."""


@dataclass
class RunnerConfig:
    max_retries: int = 5
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    dlq_max_per_minute: int = 60
    poll_timeout_ms: int = 200
    batch_size: int = 100  # records that may share one database transaction


class _CommitOnRevoke(ConsumerRebalanceListener):
    def __init__(self, runner: ConsumerRunner):
        self.runner = runner

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        parts = set(revoked)
        self.runner.commit_pending(parts)
        for tp in parts:  # another member reports these now
            try:
                LAG.remove(self.runner.name, tp.topic, str(tp.partition))
            except KeyError:
                pass

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        log.info("partitions assigned", extra=logs.log_fields(
            consumer=self.runner.name, partitions=len(list(assigned))))


class ConsumerRunner:
    """Runs one consumer group member over ``topics`` with ``handlers`` by event type."""

    def __init__(self, *, name: str, db: Database, consumer: KafkaConsumer,
                 producer: KafkaProducer, topics: list[str], handlers: Mapping[str, Handler],
                 config: RunnerConfig | None = None):
        self.name = name
        self.db = db
        self.consumer = consumer
        self.producer = producer
        self.topics = topics
        self.handlers = dict(handlers)
        self.config = config or RunnerConfig()
        self._pending: dict[TopicPartition, int] = {}
        self._dlq_times: deque[float] = deque()
        # Test hook: called after the database commit and before the offset commit.
        self.after_db_commit: Callable[[Any], None] | None = None
        self._stop: threading.Event | None = None

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        self.consumer.subscribe(self.topics, listener=_CommitOnRevoke(self))
        next_lag = 0.0
        try:
            while not stop.is_set():
                batch = self.consumer.poll(timeout_ms=self.config.poll_timeout_ms)
                self.process_batch([r for records in batch.values() for r in records], stop)
                self.commit_pending()
                if time.monotonic() >= next_lag:
                    self.record_lag()
                    next_lag = time.monotonic() + LAG_REFRESH_S
        finally:
            try:
                self.commit_pending()
            finally:
                self.consumer.close(autocommit=False)

    def record_lag(self) -> None:
        """Set the lag gauge of each assigned partition (highwater minus position; both
        are known locally after a fetch, so this sends nothing to the broker)."""
        try:
            for tp in self.consumer.assignment():
                high = self.consumer.highwater(tp)
                if high is None:
                    continue
                position = self.consumer.position(tp, timeout_ms=100)
                if position is not None:
                    LAG.labels(self.name, tp.topic, str(tp.partition)).set(
                        max(0, high - position))
        except Exception:
            log.debug("lag not recorded", exc_info=True)

    def process_batch(self, records: list[Any], stop: threading.Event | None = None) -> None:
        """Handle one poll's records; on return their offsets may be committed.

        Consecutive records share one database transaction (up to ``batch_size``): one commit
        instead of one per event is what lets a consumer keep up with hundreds of events a
        second. If anything in a shared transaction fails it is rolled back as a whole and
        its records are handled one at a time, each with its own retries and dead-lettering,
        exactly as ``process`` does; the inbox makes the second pass safe.
        """
        chunk: list[tuple[Any, events.Envelope | None, Handler | None]] = []
        for record in records:
            if stop is not None and stop.is_set():
                break
            try:
                env = events.decode(record.value)
            except events.PoisonMessage:
                self._flush(chunk)  # earlier records first: offsets stay in order
                chunk = []
                self.process(record)  # dead-letters it
                continue
            chunk.append((record, env, self.handlers.get(env.type)))
            if len(chunk) >= self.config.batch_size:
                self._flush(chunk)
                chunk = []
        self._flush(chunk)

    def _flush(self, chunk: list[tuple[Any, events.Envelope | None, Handler | None]]) -> None:
        if len(chunk) <= 1:
            for record, env, _handler in chunk:
                self.process(record, env)
            return
        started = time.perf_counter()
        try:
            with self.db.uow() as uow:
                results = self._handle_chunk(uow.session, chunk)
                uow.commit()
        except Exception:
            log.info("batch rolled back; handling its records one at a time",
                     exc_info=True, extra=logs.log_fields(consumer=self.name, size=len(chunk)))
            for record, env, _handler in chunk:
                self.process(record, env)
            return
        per_record = (time.perf_counter() - started) / len(chunk)
        processed = {r: PROCESSED.labels(self.name, r) for r in set(results)}
        timing = PROCESSING.labels(self.name)
        for (record, env, _handler), result in zip(chunk, results, strict=True):
            processed[result].inc()
            timing.observe(per_record)
            if result != "ignored" and env is not None:
                with logs.correlation(env.correlation_id, env.id):
                    self._committed(record, env, result, per_record, batch=len(chunk))
            self._pending[TopicPartition(record.topic, record.partition)] = record.offset + 1

    def _handle_chunk(self, session: Session,
                      chunk: list[tuple[Any, events.Envelope | None, Handler | None]]
                      ) -> list[str]:
        """Claim a chunk's events in one go (``inbox.claim_many``), then run the handlers of
        the claimed ones in order. Consecutive claimed events of one handler form a run; a
        handler with ``handle_many`` gets a run of several at once, others one at a time."""
        results = ["ignored"] * len(chunk)
        wanted = [(i, env) for i, (_record, env, handler) in enumerate(chunk)
                  if handler is not None and env is not None]
        claimed = inbox.claim_many(session, self.name, [env for _i, env in wanted])
        run: list[events.Envelope] = []
        run_handler: Handler | None = None
        for (i, env), ok in zip(wanted, claimed, strict=True):
            results[i] = "ok" if ok else "duplicate"
            handler = chunk[i][2]
            if not ok:
                continue
            if handler is not run_handler:
                _run(session, run_handler, run)
                run, run_handler = [], handler
            run.append(env)
        _run(session, run_handler, run)
        return results

    def _committed(self, record: Any, env: events.Envelope, result: str, seconds: float,
                   batch: int = 1) -> None:
        """After the database commit: the ids-only log line (with the correlation id it
        follows one referral across services) and the test hook."""
        log.info("event handled", extra=logs.log_fields(
            consumer=self.name, event_type=env.type, event_id=env.id, subject=env.subject,
            sequence=env.sequence, result=result, ms=round(seconds * 1000, 1), batch=batch))
        if self.after_db_commit is not None:
            self.after_db_commit(record)

    def process(self, record: Any, env: events.Envelope | None = None) -> None:
        """Handle one record (``env``: its event, if decoded already); on return its offset
        may be committed."""
        with PROCESSING.labels(self.name).time():
            self._process(record, env)

    def _process(self, record: Any, env: events.Envelope | None = None) -> None:
        tp = TopicPartition(record.topic, record.partition)
        try:
            if env is None:
                env = events.decode(record.value)
        except events.PoisonMessage as exc:
            self.dead_letter(record, f"PoisonMessage: {exc}")
        else:
            handler = self.handlers.get(env.type)
            if handler is None:
                PROCESSED.labels(self.name, "ignored").inc()
            else:
                with logs.correlation(env.correlation_id, env.id):
                    self._handle_with_retries(record, env, handler)
        self._pending[tp] = record.offset + 1

    def _handle_with_retries(self, record: Any, env: events.Envelope, handler: Handler) -> None:
        """Bounded retries, then the dead-letter topic, for failures of the message; an
        unreachable database is no fault of the message: wait for it, however long (the
        offset stays uncommitted, so a stop meanwhile means redelivery, not loss)."""
        attempt = outages = 0
        while True:
            try:
                started = time.perf_counter()
                result = self._apply(env, handler)
                PROCESSED.labels(self.name, result).inc()
                self._committed(record, env, result, time.perf_counter() - started)
                return
            except (PermanentError, ValidationError, events.PoisonMessage) as exc:
                self.dead_letter(record, f"{type(exc).__name__}: {_safe(exc)}")
                return
            except Exception as exc:
                if is_unavailable(exc):
                    if self._stop is not None and self._stop.is_set():
                        raise
                    outages += 1
                    log.warning("database unavailable; waiting", exc_info=outages == 1,
                                extra=logs.log_fields(consumer=self.name, event_id=env.id,
                                                      attempt=outages))
                    time.sleep(min(self.config.max_backoff_s,
                                   self.config.backoff_s * 2 ** min(outages, 6)))
                    continue
                attempt += 1
                log.warning("handler failed", exc_info=True, extra=logs.log_fields(
                    consumer=self.name, event_type=env.type, event_id=env.id, attempt=attempt))
                if attempt >= self.config.max_retries:
                    self.dead_letter(record, f"{type(exc).__name__} after {attempt} attempts")
                    return
                time.sleep(min(self.config.max_backoff_s,
                               self.config.backoff_s * 2 ** (attempt - 1)))

    def _apply(self, env: events.Envelope, handler: Handler) -> str:
        with self.db.uow() as uow:
            if not inbox.claim(uow.session, self.name, env):
                uow.rollback()
                return "duplicate"
            handler(uow.session, env)
            uow.commit()
        return "ok"

    def dead_letter(self, record: Any, error: str) -> None:
        now = time.monotonic()
        while self._dlq_times and now - self._dlq_times[0] > 60:
            self._dlq_times.popleft()
        if len(self._dlq_times) >= self.config.dlq_max_per_minute:
            raise ConsumerHalted(
                f"{self.name}: more than {self.config.dlq_max_per_minute} dead letters a minute")
        self._dlq_times.append(now)
        headers = list(record.headers or []) + [
            ("dlq.error", error[:500].encode()),
            ("dlq.original_topic", record.topic.encode()),
            ("dlq.original_partition", str(record.partition).encode()),
            ("dlq.original_offset", str(record.offset).encode()),
            ("dlq.consumer_group", self.name.encode()),
        ]
        dlq = events.dlq_topic(record.topic)
        self.producer.send(dlq, key=record.key, value=record.value, headers=headers).get(
            timeout=30)  # flushed before the offset commit
        DEAD_LETTERED.labels(self.name, record.topic).inc()
        PROCESSED.labels(self.name, "dead_lettered").inc()
        log.error("message dead-lettered", extra=logs.log_fields(
            consumer=self.name, topic=record.topic, partition=record.partition,
            offset=record.offset, error=error))

    def commit_pending(self, only: set[TopicPartition] | None = None) -> None:
        offsets = {tp: OffsetAndMetadata(off, "", -1) for tp, off in self._pending.items()
                   if only is None or tp in only}
        if not offsets:
            return
        self.consumer.commit(offsets)
        for tp in offsets:
            self._pending.pop(tp, None)


def _run(session: Session, handler: Handler | None, envs: list[events.Envelope]) -> None:
    many = getattr(handler, "handle_many", None)
    if many is not None and len(envs) > 1:
        many(session, envs)  # ids of the run's events are in the after-commit log lines
        return
    for env in envs:
        assert handler is not None
        with logs.correlation(env.correlation_id, env.id):
            handler(session, env)


def _safe(exc: Exception) -> str:
    """Error text safe for headers and logs: our own messages and field names only."""
    if isinstance(exc, ValidationError):
        fields = exc.messages.keys() if isinstance(exc.messages, dict) else []
        return "invalid fields: " + ",".join(sorted(str(f) for f in fields))
    if isinstance(exc, (PermanentError, events.PoisonMessage)):
        return str(exc)[:300]
    return ""
