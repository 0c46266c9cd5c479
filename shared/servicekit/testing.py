"""Test infrastructure, resolved in this order: environment variables -> testcontainers when
a Docker engine answers -> the local PostgreSQL (127.0.0.1:5432) and the Tansu binary
started here. A missing piece raises; tests never silently skip for lack of infrastructure.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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


# --- equivalence of a consumer's batch path (handle_many) and its one-event path ----------

@contextmanager
def seeded_uuids(monkeypatch: Any, seed: int) -> Iterator[None]:
    """``uuid.uuid4`` from a seeded generator, so two runs of the same scenario draw the same
    ids (``monkeypatch``: pytest's fixture)."""
    rng = random.Random(seed)
    with monkeypatch.context() as m:
        m.setattr(uuid, "uuid4", lambda: uuid.UUID(int=rng.getrandbits(128), version=4))
        yield


class RecordingProducer:
    """A producer that keeps what the runner sends (dead letters) and acknowledges at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def send(self, topic: str, key: Any = None, value: bytes = b"", headers: Any = None) -> Any:
        self.sent.append((topic, value))
        return SimpleNamespace(get=lambda timeout=None: None)


def equivalence_runner(spec: Any, db: Any, event_type: str, batched: bool, monkeypatch: Any
                       ) -> tuple[Any, RecordingProducer, list[int]]:
    """A ``ConsumerRunner`` for ``spec`` on ``db``: batched (polls of up to 100, and the
    sizes of the ``handle_many`` runs of ``event_type`` that returned are appended to the
    list returned) or one event at a time through the handler's ``__call__``."""
    from .consumer import ConsumerRunner, RunnerConfig

    handlers = dict(spec.handlers)
    runs: list[int] = []
    handler = handlers[event_type]
    if batched:
        original = handler.handle_many

        def counted(session: Any, envs: list[Any]) -> None:
            original(session, envs)
            runs.append(len(envs))  # only runs that returned

        monkeypatch.setattr(handler, "handle_many", counted, raising=False)
    else:
        handlers[event_type] = handler.__call__  # no handle_many: each event alone
    producer = RecordingProducer()
    runner = ConsumerRunner(name=spec.name, db=db, consumer=None, producer=producer,
                            topics=spec.topics, handlers=handlers,
                            config=RunnerConfig(batch_size=100 if batched else 1, backoff_s=0.0))
    return runner, producer, runs


def renamed(value: Any, names: dict[str, str]) -> Any:
    """``value`` (nested dicts, lists, tuples) with every string found in ``names`` replaced:
    random ids named by something both runs share."""
    if isinstance(value, str):
        return names.get(value, value)
    if isinstance(value, dict):
        return {k: renamed(v, names) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(renamed(v, names) for v in value)
    return value


def exact(value: Any) -> Any:
    """``value`` (nested dicts and lists of JSON values) with every type and every key order
    visible to ``==``: two results a fast path and its reference give compare equal only
    when they are the same down to ``1`` vs ``1.0`` and the order of keys (NaN, by its repr,
    equals NaN)."""
    if type(value) is dict:
        return "dict", [(key, exact(item)) for key, item in value.items()]
    if type(value) is list:
        return "list", [exact(item) for item in value]
    return type(value).__name__, repr(value)
