"""Fixtures shared by every test folder (shared/tests, services/*/tests, tests/)."""
from __future__ import annotations

import os
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
    try:
        bootstrap = f"127.0.0.1:{port}"
        kafkakit.wait_for_broker(bootstrap, timeout_s=30)
        yield bootstrap
    finally:
        stop_process(proc)


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
