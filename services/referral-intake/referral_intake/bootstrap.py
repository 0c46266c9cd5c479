"""Composition root of referral-intake: the one place that builds it from settings."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from flask import Flask

from servicekit import crypto, logs
from servicekit.db import Database
from servicekit.runtime import WorkerSpec
from servicekit.service_app import create_service_app
from servicekit.settings import Settings

from . import api, consumers, domain, handlers
from .tables import metadata

SERVICE = "referral-intake"
MIGRATIONS = Path(__file__).parent / "migrations"


def load_settings() -> Settings:
    return Settings.from_env(SERVICE)


def build_context(settings: Settings) -> handlers.Context:
    keyring = crypto.Keyring.load(settings.get("PII_KEYRING"),
                                  Path(settings.get("PII_KEYRING_FILE")),
                                  create=settings.get("DEV_KEYS") == "1")
    return handlers.Context(
        keyring=keyring,
        ttl=domain.OfferTtl(emergency=timedelta(seconds=settings.int("OFFER_TTL_EMERGENCY_S")),
                            urgent=timedelta(seconds=settings.int("OFFER_TTL_URGENT_S")),
                            routine=timedelta(seconds=settings.int("OFFER_TTL_ROUTINE_S"))),
        pseudonym_key=keyring.derive_key("officer-pseudonym"),
    )


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    db = Database(settings.database_url, metadata)
    app, smorest = create_service_app(SERVICE, settings, db)
    app.extensions["intake_ctx"] = build_context(settings)
    api.register(smorest)
    return app


def worker(settings: Settings | None = None) -> tuple[Database, WorkerSpec]:
    settings = settings or load_settings()
    logs.configure(SERVICE, settings.get("LOG_LEVEL"))
    db = Database(settings.database_url, metadata)
    return db, WorkerSpec(consumers=consumers.consumer_specs(build_context(settings)))
