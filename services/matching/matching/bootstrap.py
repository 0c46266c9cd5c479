"""Composition root of matching: the one place that builds it from settings."""
from __future__ import annotations

from pathlib import Path

from flask import Flask

from servicekit import logs
from servicekit.db import Database
from servicekit.runtime import WorkerSpec
from servicekit.service_app import create_service_app
from servicekit.settings import Settings

from . import api, consumers, directory, domain
from .decide import Policy
from .index import DirectoryIndex
from .tables import metadata

SERVICE = "matching"
MIGRATIONS = Path(__file__).parent / "migrations"


def load_settings() -> Settings:
    return Settings.from_env(SERVICE)


def policy_from(settings: Settings, *, in_memory: bool = False) -> Policy:
    """Scoring weights and retry batch from the ``MATCHING_*`` settings (validated);
    ``in_memory``: decide from an in-memory directory index (the worker's)."""
    def number(name: str) -> float:
        return float(settings.get(f"MATCHING_{name}"))

    weights = domain.Weights(
        distance=number("WEIGHT_DISTANCE"), headroom=number("WEIGHT_HEADROOM"),
        language=number("WEIGHT_LANGUAGE"), acceptance=number("WEIGHT_ACCEPTANCE"),
        response=number("WEIGHT_RESPONSE"), spreading=number("WEIGHT_SPREADING"),
        distance_scale_km=number("DISTANCE_SCALE_KM"),
        response_scale_h=number("RESPONSE_SCALE_H"))
    return Policy(weights=weights, retry_batch=settings.int("MATCHING_RETRY_BATCH"),
                  cache=directory.CandidateCache(),
                  index=DirectoryIndex() if in_memory else None)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    db = Database(settings.database_url, metadata)
    app, smorest = create_service_app(SERVICE, settings, db)
    app.extensions["matching_policy"] = policy_from(settings)
    api.register(smorest)
    return app


def worker(settings: Settings | None = None) -> tuple[Database, WorkerSpec]:
    settings = settings or load_settings()
    logs.configure(SERVICE, settings.get("LOG_LEVEL"))
    db = Database(settings.database_url, metadata)
    policy = policy_from(settings, in_memory=True)
    return db, WorkerSpec(consumers=consumers.consumer_specs(policy), relay=True)
