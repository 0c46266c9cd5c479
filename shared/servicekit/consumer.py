"""The consumer runner: at-least-once delivery made effectively-once by the inbox.

For each record: decode and upcast the envelope, then in ONE database transaction claim the
event in the inbox and run the handler; commit the transaction; only then commit the offset.
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
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata
from marshmallow import ValidationError
from prometheus_client import Counter
from sqlalchemy.orm import Session

from . import events, inbox, logs
from .db import Database

log = logging.getLogger(__name__)

Handler = Callable[[Session, events.Envelope], None]

PROCESSED = Counter("consumer_messages_total", "Messages handled by consumers",
                    ["consumer", "result"])
DEAD_LETTERED = Counter("consumer_dead_letters_total", "Messages sent to a dead-letter topic",
                        ["consumer", "topic"])


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


class _CommitOnRevoke(ConsumerRebalanceListener):
    def __init__(self, runner: "ConsumerRunner"):
        self.runner = runner

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self.runner.commit_pending(set(revoked))

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

    def run(self, stop: threading.Event) -> None:
        self.consumer.subscribe(self.topics, listener=_CommitOnRevoke(self))
        try:
            while not stop.is_set():
                batch = self.consumer.poll(timeout_ms=self.config.poll_timeout_ms)
                for _tp, records in batch.items():
                    for record in records:
                        if stop.is_set():
                            break
                        self.process(record)
                self.commit_pending()
        finally:
            try:
                self.commit_pending()
            finally:
                self.consumer.close(autocommit=False)

    def process(self, record: Any) -> None:
        """Handle one record; on return its offset may be committed."""
        tp = TopicPartition(record.topic, record.partition)
        try:
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
        for attempt in range(1, self.config.max_retries + 1):
            try:
                result = self._apply(env, handler)
                PROCESSED.labels(self.name, result).inc()
                if self.after_db_commit is not None:
                    self.after_db_commit(record)
                return
            except (PermanentError, ValidationError, events.PoisonMessage) as exc:
                self.dead_letter(record, f"{type(exc).__name__}: {_safe(exc)}")
                return
            except Exception as exc:  # noqa: BLE001 - retried, then dead-lettered
                log.warning("handler failed", exc_info=True, extra=logs.log_fields(
                    consumer=self.name, event_type=env.type, event_id=env.id, attempt=attempt))
                if attempt == self.config.max_retries:
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


def _safe(exc: Exception) -> str:
    """Error text safe for headers and logs: our own messages and field names only."""
    if isinstance(exc, ValidationError):
        fields = exc.messages.keys() if isinstance(exc.messages, dict) else []
        return "invalid fields: " + ",".join(sorted(str(f) for f in fields))
    if isinstance(exc, (PermanentError, events.PoisonMessage)):
        return str(exc)[:300]
    return ""
