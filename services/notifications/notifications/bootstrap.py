"""Composition root of notifications: the one place that builds it from settings."""
from __future__ import annotations

from pathlib import Path

from flask import Flask

from servicekit import logs
from servicekit.db import Database
from servicekit.runtime import WorkerSpec
from servicekit.service_app import create_service_app
from servicekit.settings import Settings

from . import api, consumers
from .tables import metadata

SERVICE = "notifications"
MIGRATIONS = Path(__file__).parent / "migrations"


def load_settings() -> Settings:
    return Settings.from_env(SERVICE)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    db = Database(settings.database_url, metadata)
    # The api reads its own database only (no broker), so only the database gates readiness.
    app, smorest = create_service_app(SERVICE, settings, db, needs_broker=False)
    api.register(smorest)
    return app


def worker(settings: Settings | None = None) -> tuple[Database, WorkerSpec]:
    """Consumers only: notifications publish no events yet, so no outbox relay."""
    settings = settings or load_settings()
    logs.configure(SERVICE, settings.get("LOG_LEVEL"))
    db = Database(settings.database_url, metadata)
    return db, WorkerSpec(consumers=consumers.consumer_specs(), relay=False)
