"""What every service's ``create_app`` shares: logging, readiness checks, database, auth."""
from __future__ import annotations

from flask import Flask
from flask_smorest import Api

from . import kafka as kafkakit
from . import logs
from .auth import TokenVerifier, init_auth
from .db import Database
from .settings import Settings
from .web import create_base_app


def create_service_app(service: str, settings: Settings, db: Database, *,
                       needs_broker: bool = True, non_json_endpoints: tuple[str, ...] = ()
                       ) -> tuple[Flask, Api]:
    """A Flask app for ``service`` with ``db`` in ``app.extensions["db"]`` and token auth.

    ``/readyz`` checks the database and, when the api itself publishes or reads through
    the broker's health (``needs_broker``), that the broker answers.
    ``non_json_endpoints`` (e.g. an upload) skip the JSON content-type and 64 KB body checks;
    such a view sets its own ``request.max_content_length``.
    """
    logs.configure(service, settings.get("LOG_LEVEL"))

    def database() -> None:
        db.ping()

    def broker() -> None:
        kafkakit.wait_for_broker(settings.kafka_bootstrap_servers, timeout_s=2)

    app, api = create_base_app(service, readiness=[database, broker] if needs_broker
                               else [database],
                               auth_failure_limit=settings.int("AUTH_FAILURE_LIMIT"),
                               auth_failure_window_s=settings.int("AUTH_FAILURE_WINDOW_S"),
                               non_json_endpoints=non_json_endpoints)
    app.extensions["db"] = db
    init_auth(app, TokenVerifier.from_settings(settings))
    return app, api
