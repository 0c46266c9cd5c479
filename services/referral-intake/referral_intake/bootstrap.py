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

from . import api, consumers, domain, handlers, timers, vault
from .tables import metadata

SERVICE = "referral-intake"
MIGRATIONS = Path(__file__).parent / "migrations"


def load_settings() -> Settings:
    return Settings.from_env(SERVICE)


def _durations(settings: Settings, prefix: str) -> domain.OfferTtl:
    business = frozenset(u.strip() for u in settings.get("SLA_BUSINESS_DAYS").split(",")
                         if u.strip())
    return domain.OfferTtl(
        emergency=timedelta(seconds=settings.int(f"{prefix}_EMERGENCY_S")),
        urgent=timedelta(seconds=settings.int(f"{prefix}_URGENT_S")),
        routine=timedelta(seconds=settings.int(f"{prefix}_ROUTINE_S")), business_days=business)


def build_context(settings: Settings) -> handlers.Context:
    keyring = crypto.Keyring.load(settings.get("PII_KEYRING"),
                                  Path(settings.get("PII_KEYRING_FILE")),
                                  create=settings.get("DEV_KEYS") == "1")
    keyfile = None if settings.get("PII_KEYRING").strip() else Path(
        settings.get("PII_KEYRING_FILE"))
    return handlers.Context(
        keyring=keyring,
        keys=vault.KeySource(keyring, keyfile),
        first_contact=_durations(settings, "FIRST_CONTACT"),
        audit_key=keyring.derive_key("audit-chain"),
        break_glass=timedelta(minutes=settings.int("BREAK_GLASS_MINUTES")),
        ttl=_durations(settings, "OFFER_TTL"),
        pseudonym_key=crypto.load_pseudonym_key(settings),
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
    ctx = build_context(settings)
    return db, WorkerSpec(consumers=consumers.consumer_specs(ctx), timers=[
        timers.timer_loop(db, ctx, settings.int("INTAKE_TIMER_INTERVAL_S"))])
