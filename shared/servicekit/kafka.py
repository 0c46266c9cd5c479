"""Kafka plumbing: JSON serializers, the producer, topic bootstrap and consumer settings.

Coded to the Kafka protocol only; the settings that make group joins fast on the embedded
broker (short session timeout, 1 s heartbeats) are ordinary, configurable client settings.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.serializer import Deserializer, Serializer

from . import events
from .settings import Settings

log = logging.getLogger(__name__)


class JsonSerializer(Serializer):  # type: ignore[misc]
    """Compact UTF-8 JSON (our own; we do not depend on the client's bundled one)."""

    def serialize(self, topic: str, headers: Any, data: Any) -> bytes | None:
        if data is None:
            return None
        return json.dumps(data, separators=(",", ":"), sort_keys=True, default=str).encode()


class JsonDeserializer(Deserializer):  # type: ignore[misc]
    def deserialize(self, topic: str, headers: Any, data: bytes | None) -> Any:
        return None if data is None else json.loads(data.decode("utf-8"))


def key_serializer(key: str | bytes | None) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


def native_crc32c() -> bool:
    """Whether kafka-python checksums record batches (every produce and every fetch) in
    native code: its pure-Python CRC-32C fallback was a fifth of a worker's CPU."""
    from kafka.record import util

    return util.crc32c_c is not None


def make_producer(bootstrap: str, **overrides: Any) -> KafkaProducer:
    """Durable producer: acks from all in-sync replicas, idempotent, ~5 ms batching."""
    if not native_crc32c():
        log.warning("kafka-python checksums in pure Python (install kafka-python[crc32c])")
    config: dict[str, Any] = dict(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        retries=2147483647,
        max_in_flight_requests_per_connection=5,
        request_timeout_ms=15000,
        delivery_timeout_ms=60000,
        client_id="referrals-producer",
    )
    config.update(overrides)
    return KafkaProducer(**config)


def consumer_config(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = dict(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.int("KAFKA_SESSION_TIMEOUT_MS"),
        heartbeat_interval_ms=settings.int("KAFKA_HEARTBEAT_INTERVAL_MS"),
        max_poll_records=100,
        fetch_max_wait_ms=settings.int("KAFKA_FETCH_MAX_WAIT_MS"),
        max_poll_interval_ms=300000,
        client_id=f"{group_id}-consumer",
    )
    config.update(overrides)
    return config


def make_consumer(settings: Settings, group_id: str, **overrides: Any) -> KafkaConsumer:
    return KafkaConsumer(**consumer_config(settings, group_id, **overrides))


def bootstrap_topics(bootstrap: str, partitions: int = 6, replication: int = 1,
                     timeout_s: float = 60.0) -> None:
    """Create the public topics and their dead-letter topics if missing (idempotent)."""
    wanted = [*events.ALL_TOPICS, *(events.dlq_topic(t) for t in events.ALL_TOPICS)]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="referrals-admin")
            break
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    try:
        existing = set(admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if missing:
            try:
                admin.create_topics([NewTopic(t, partitions, replication) for t in missing])
            except TopicAlreadyExistsError:
                pass  # another process won the race
            log.info("topics created", extra={"fields": {"topics": missing}})
    finally:
        admin.close()


def wait_for_broker(bootstrap: str, timeout_s: float = 30.0) -> None:
    """Block until the broker answers a metadata request."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="referrals-probe",
                                     request_timeout_ms=3000)
            admin.list_topics()
            admin.close()
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last = exc
            time.sleep(0.3)
    raise TimeoutError(f"Kafka broker at {bootstrap} did not answer") from last


def broker_ready(bootstrap: str) -> bool:
    try:
        wait_for_broker(bootstrap, timeout_s=2.0)
        return True
    except TimeoutError:
        return False
