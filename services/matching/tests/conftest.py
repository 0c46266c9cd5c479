"""Fixtures of matching's integration tests: a fresh, migrated database per test.

Every integration test runs on PostgreSQL (a fresh database from ``make_settings``) and on
SQLite, the embedded mode's database, since handlers must behave the same on both; the
handlers decide from an in-memory directory index there (as the worker does), and once
more on PostgreSQL from the database's spatial index (``Policy`` without an index, the
handlers' default). ``test_policy`` on the database says which (``test_matching_handlers
.apply`` reads it).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from matching import bootstrap
from matching.decide import DEFAULT_POLICY, Policy
from matching.index import DirectoryIndex
from matching.tables import metadata
from servicekit.db import Database, run_migrations
from servicekit.settings import Settings


@pytest.fixture
def matching_settings(make_settings: Callable[..., Settings]) -> Settings:
    settings = make_settings("matching")
    run_migrations(settings.database_url, bootstrap.MIGRATIONS)
    return settings


@pytest.fixture(params=["postgresql", "sqlite", "postgresql-database-index"])
def matching_db(request: pytest.FixtureRequest, matching_settings: Settings,
                tmp_path: Path) -> Iterator[Database]:
    url = matching_settings.database_url
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'matching.db'}"
        run_migrations(url, bootstrap.MIGRATIONS)
    db = Database(url, metadata)
    db.test_policy = (DEFAULT_POLICY if request.param.endswith("database-index")  # type: ignore[attr-defined]
                      else Policy(index=DirectoryIndex()))
    yield db
    db.dispose()
