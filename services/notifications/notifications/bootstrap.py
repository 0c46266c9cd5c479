"""Composition root of notifications: the one place that builds it from settings."""
from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from flask import Flask

from servicekit import logs
from servicekit.db import Database
from servicekit.runtime import WorkerSpec
from servicekit.service_app import create_service_app
from servicekit.settings import Settings

from . import api, config, consumers, handlers
from .dispatch import Dispatcher
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
    app.extensions["notifications"] = config.api_config(settings)
    api.register(smorest)
    return app


def dispatcher(settings: Settings, db: Database) -> Dispatcher:
    return Dispatcher(db, config.dispatch_config(settings),
                      webhook=config.webhook_sender(settings),
                      email=config.email_sender(settings))


def reminder_timer(settings: Settings, db: Database) -> Callable[[threading.Event], None]:
    """The worker's timer that turns due offer reminders into notifications."""
    options, interval = config.options(settings), settings.int("DELIVERY_POLL_INTERVAL_MS") / 1000

    def offer_reminders(stop: threading.Event) -> None:
        while not stop.is_set():
            with db.transaction() as session:
                due = handlers.send_due_reminders(session, options)
            if not due:
                stop.wait(interval)

    return offer_reminders


def worker(settings: Settings | None = None) -> tuple[Database, WorkerSpec]:
    """Consumers, the delivery dispatcher and the reminder timer; notifications publish no
    events, so no outbox relay."""
    settings = settings or load_settings()
    logs.configure(SERVICE, settings.get("LOG_LEVEL"))
    db = Database(settings.database_url, metadata)
    return db, WorkerSpec(consumers=consumers.consumer_specs(config.options(settings)),
                          timers=[dispatcher(settings, db).run_forever,
                                  reminder_timer(settings, db)],
                          relay=False)
