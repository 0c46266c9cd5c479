"""provider-registry test fixtures: the app on a fresh PostgreSQL database (``reg``)."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from registry_harness import Harness

from provider_registry import bootstrap
from servicekit.db import run_migrations
from servicekit.settings import Settings


@pytest.fixture
def reg(make_settings: Callable[..., Settings]) -> Iterator[Harness]:
    settings = make_settings("provider-registry")
    run_migrations(settings.database_url, bootstrap.MIGRATIONS)
    app = bootstrap.create_app(settings)
    yield Harness(settings, app.extensions["db"], app.test_client())
    app.extensions["db"].dispose()
