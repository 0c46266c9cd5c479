"""Bring service databases to the latest schema and load the demo directory: used by
`referrals up`/`seed`, the end-to-end tests and the benchmark alike."""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Mapping

from .db import Database, run_migrations
from .settings import SERVICE_MODULES


def bootstrap_of(service: str) -> ModuleType:
    """A service's composition root (``<package>.bootstrap``)."""
    return importlib.import_module(f"{SERVICE_MODULES[service]}.bootstrap")


def migrate(database_urls: Mapping[str, str]) -> None:
    """Upgrade each named service's database with that service's own migrations."""
    for service, url in database_urls.items():
        run_migrations(url, Path(bootstrap_of(service).MIGRATIONS))


def seed_demo_directory(registry_url: str) -> None:
    """Load the demo providers into provider-registry's database (idempotent)."""
    from provider_registry.seed import seed_demo
    from provider_registry.tables import metadata

    db = Database(registry_url, metadata)
    try:
        seed_demo(db)
    finally:
        db.dispose()


def seed_synthetic_city(registry_url: str, services: int, seed: int) -> int:
    """Build provider-registry's deterministic synthetic city; returns how many services
    were new (0 when the same city was seeded before)."""
    from provider_registry.synthetic import seed_city
    from provider_registry.tables import metadata

    db = Database(registry_url, metadata)
    try:
        return seed_city(db, services, seed).created
    finally:
        db.dispose()


def prepare(database_urls: Mapping[str, str]) -> None:
    """Migrate every database and seed the demo directory."""
    migrate(database_urls)
    seed_demo_directory(database_urls["provider-registry"])
