"""The ``intake`` fixture: a referral-intake app on a fresh PostgreSQL database."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from intake_testkit import Intake

from referral_intake import bootstrap
from servicekit.db import run_migrations
from servicekit.settings import Settings


@pytest.fixture
def intake(make_settings: Callable[..., Settings]) -> Iterator[Intake]:
    settings = make_settings("referral-intake")
    run_migrations(settings.database_url, bootstrap.MIGRATIONS)
    found = Intake(settings)
    yield found
    found.db.dispose()
