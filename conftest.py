"""Fixtures shared by every test folder (shared/tests, services/*/tests, tests/)."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from servicekit import broker
from servicekit import kafka as kafkakit
from servicekit.settings import SERVICE_INFO, Settings
from servicekit.testing import Infrastructure, start_infrastructure, stop_process


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infrastructure]:
    """The broker and PostgreSQL of this run (fails loudly when either is missing)."""
    found = start_infrastructure(tmp_path_factory.mktemp("infra"))
    yield found
    found.close()


@pytest.fixture(scope="module")
def stack_kafka(infra: Infrastructure, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The broker for one module's real-process stack.

    A stack's consumer groups are new and read their topics from the beginning, so on the
    run's shared broker they would first work through every earlier test's events (some
    deliberately poisonous). With the local Tansu each such module gets a broker of its own;
    an external broker (KAFKA_BOOTSTRAP_SERVERS, testcontainers) is shared as it is.
    """
    if infra.kafka_origin != "tansu":
        yield infra.kafka
        return
    port = broker.free_port()
    proc = broker.start_tansu(port, tmp_path_factory.mktemp("stack-broker") / "tansu.log")
    bootstrap = f"127.0.0.1:{port}"
    _LOCAL_BROKERS[bootstrap] = proc
    try:
        kafkakit.wait_for_broker(bootstrap, timeout_s=30)
        yield bootstrap
    finally:
        _LOCAL_BROKERS.pop(bootstrap, None)
        stop_process(proc)


_LOCAL_BROKERS: dict[str, subprocess.Popen[bytes]] = {}


@pytest.fixture(scope="module")
def broker_outage(stack_kafka: str) -> Callable[[float], str]:
    """Take the module's broker away for some seconds and bring it back; returns how.

    The local Tansu keeps its data only in memory, so it cannot be restarted without losing
    every topic: it is frozen (SIGSTOP) and thawed (SIGCONT) instead. Clients then see what
    they see of a dead broker (no answers, timeouts, sessions expiring), but the log
    survives, which a real restart must prove by itself. Against an external broker (the
    docker-compose Apache Kafka), FAULTS_BROKER_STOP_CMD and FAULTS_BROKER_START_CMD are
    run instead (e.g. `docker compose stop kafka` / `docker compose start kafka`); without
    them the case fails, naming them."""
    def outage(seconds: float) -> str:
        proc = _LOCAL_BROKERS.get(stack_kafka)
        if proc is not None:
            proc.send_signal(signal.SIGSTOP)
            try:
                time.sleep(0.2)
                state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                assert state == "T", f"the broker was not stopped (state {state})"
                time.sleep(seconds)
            finally:
                proc.send_signal(signal.SIGCONT)
            return f"local Tansu frozen {seconds:g} s (SIGSTOP/SIGCONT: memory storage)"
        stop, start = (os.environ.get(f"FAULTS_BROKER_{k}_CMD", "") for k in ("STOP", "START"))
        if not (stop and start):
            raise AssertionError("an external broker: set FAULTS_BROKER_STOP_CMD and "
                                 "FAULTS_BROKER_START_CMD to stop and start it")
        subprocess.run(shlex.split(stop), check=True, timeout=120)
        try:
            time.sleep(seconds)
        finally:
            subprocess.run(shlex.split(start), check=True, timeout=300)
        return f"broker stopped {seconds:g} s and started ({stop!r}, {start!r})"

    return outage


@pytest.fixture
def make_settings(infra: Infrastructure, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a service on a fresh PostgreSQL database and the run's broker."""

    def build(service: str, **overrides: str) -> Settings:
        prefix = SERVICE_INFO[service][0]
        env = {
            "VAR_DIR": str(tmp_path / "var"),
            "KAFKA_BOOTSTRAP_SERVERS": infra.kafka,
            f"{prefix}_DATABASE_URL": infra.new_database(service),
            "CONSUMER_RETRY_BACKOFF_MS": "20",
            **overrides,
        }
        return Settings.from_env(service, env)

    return build


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"KAFKA_BOOTSTRAP_SERVERS={os.environ.get('KAFKA_BOOTSTRAP_SERVERS', '(fixture)')}"]
