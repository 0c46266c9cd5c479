"""Fixtures shared by every test folder (shared/tests, services/*/tests, tests/)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import pytest

from servicekit.settings import SERVICE_INFO, Settings
from servicekit.testing import Infrastructure, start_infrastructure


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infrastructure]:
    """The broker and PostgreSQL of this run (fails loudly when either is missing)."""
    found = start_infrastructure(tmp_path_factory.mktemp("infra"))
    yield found
    found.close()


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
