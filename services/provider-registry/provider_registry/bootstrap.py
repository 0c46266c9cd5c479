"""Composition root of provider-registry: the one place that builds it from settings."""
from __future__ import annotations

from pathlib import Path

from flask import Flask

from servicekit import logs
from servicekit.db import Database
from servicekit.runtime import WorkerSpec
from servicekit.service_app import create_service_app
from servicekit.settings import Settings

from . import api, consumers, hsds_api
from .tables import metadata

SERVICE = "provider-registry"
MIGRATIONS = Path(__file__).parent / "migrations"


def load_settings() -> Settings:
    return Settings.from_env(SERVICE)


def open_database(settings: Settings) -> Database:
    return Database(settings.database_url, metadata)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    db = open_database(settings)
    app, smorest = create_service_app(SERVICE, settings, db,
                                      non_json_endpoints=(hsds_api.IMPORT_ENDPOINT,))
    app.extensions["registry_stale_after_days"] = settings.int("REGISTRY_STALE_AFTER_DAYS")
    app.extensions["registry_settings"] = settings
    api.register(smorest)
    hsds_api.register(smorest)
    return app


def worker(settings: Settings | None = None) -> tuple[Database, WorkerSpec]:
    """The registry's worker only relays its outbox to ``provider.events``."""
    settings = settings or load_settings()
    logs.configure(SERVICE, settings.get("LOG_LEVEL"))
    return open_database(settings), WorkerSpec(consumers=consumers.consumer_specs(), relay=True)
