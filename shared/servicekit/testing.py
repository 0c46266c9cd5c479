"""Test infrastructure, resolved in this order: environment variables -> testcontainers when
a Docker engine answers -> the local PostgreSQL (127.0.0.1:5432) and the Tansu binary
started here. A missing piece raises; tests never silently skip for lack of infrastructure.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import psycopg

from . import broker
from . import kafka as kafkakit

LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def sqlalchemy_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@dataclass
class Infrastructure:
    """Where the broker and the PostgreSQL server of this test run are."""

    kafka: str
    pg_admin_url: str
    kafka_origin: str
    pg_origin: str
    _stack: ExitStack = field(default_factory=ExitStack)
    _databases: list[str] = field(default_factory=list)
    tansu: Any = None

    def new_database(self, label: str) -> str:
        """Create a fresh database; returns its SQLAlchemy URL."""
        name = f"t_{label.replace('-', '_')}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(_libpq(self.pg_admin_url), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self._databases.append(name)
        base = _libpq(self.pg_admin_url).rsplit("/", 1)[0]
        return sqlalchemy_url(f"{base}/{name}")

    def close(self) -> None:
        try:
            with psycopg.connect(_libpq(self.pg_admin_url), autocommit=True) as conn:
                for name in self._databases:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            self._stack.close()


def _resolve_kafka(stack: ExitStack, var_dir: Path) -> tuple[str, str, Any]:
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        kafkakit.wait_for_broker(env, timeout_s=30)
        return env, "environment", None
    if docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        container = stack.enter_context(KafkaContainer().with_kraft())
        return container.get_bootstrap_server(), "testcontainers", None
    port = broker.free_port()
    proc = broker.start_tansu(port, var_dir / "tansu.log")
    stack.callback(stop_process, proc)
    bootstrap = f"127.0.0.1:{port}"
    kafkakit.wait_for_broker(bootstrap, timeout_s=30)
    return bootstrap, "tansu", proc


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _resolve_pg(stack: ExitStack) -> tuple[str, str]:
    env = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if env:
        return env, "environment"
    if docker_engine_answers():
        from testcontainers.postgres import PostgresContainer

        container = stack.enter_context(PostgresContainer("postgres:16-alpine"))
        return container.get_connection_url(driver=None), "testcontainers"
    try:
        with psycopg.connect(LOCAL_PG, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        raise RuntimeError(
            "No PostgreSQL for the tests: set TEST_DATABASE_URL, start Docker, or run "
            "PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth)") from exc
    return LOCAL_PG, "local"


def start_infrastructure(var_dir: Path) -> Infrastructure:
    stack = ExitStack()
    try:
        kafka, kafka_origin, tansu = _resolve_kafka(stack, var_dir)
        pg, pg_origin = _resolve_pg(stack)
    except BaseException:
        stack.close()
        raise
    return Infrastructure(kafka=kafka, pg_admin_url=pg, kafka_origin=kafka_origin,
                          pg_origin=pg_origin, _stack=stack, tansu=tansu)


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05,
             message: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy; return its value or raise with ``message``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def iter_topic(bootstrap: str, topic: str, timeout_s: float = 5.0) -> Iterator[Any]:
    """Every record currently in ``topic`` (all partitions), read without a group."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=int(timeout_s * 1000))
    parts = consumer.partitions_for_topic(topic) or set()
    consumer.assign([TopicPartition(topic, p) for p in parts])
    consumer.seek_to_beginning()
    try:
        yield from consumer
    finally:
        consumer.close()
