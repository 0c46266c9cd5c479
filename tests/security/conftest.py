"""Every service's real Flask app, in process, on fresh migrated PostgreSQL databases.

The apps are built once per session (building four apps and migrating four databases is
the slow part); each test talks to them through Flask's test client. One ``VAR_DIR`` is
shared, so one dev keypair signs tokens every service accepts.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from servicekit import demo
from servicekit.auth import mint_dev_token
from servicekit.provisioning import bootstrap_of, prepare
from servicekit.settings import SERVICE_INFO, SERVICE_MODULES, Settings
from servicekit.testing import Infrastructure

PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json")
PUBLIC_PREFIXES = ("/v1/public/",)

# role -> the claims of a caller in that role (the demo directory's ids)
ROLE_CLAIMS: dict[str, dict[str, Any]] = {
    "officer": {"sub": "officer-sec", "agency": demo.AGENCY},
    "provider": {"sub": "provider-sec", "org": demo.DEMO_ORG_ID},
    "supervisor": {"sub": "supervisor-sec", "agency": demo.AGENCY},
    "admin": {"sub": "admin-sec"},
}

_addresses = itertools.count(1)


def fresh_address() -> str:
    """A client address no other test used, so the 401 limiter of one test never
    answers another test's requests."""
    n = next(_addresses)
    return f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"


@dataclass
class Services:
    env: dict[str, str]
    apps: dict[str, Flask]

    @property
    def settings(self) -> Settings:
        return Settings.from_env("cli", self.env)

    def token(self, role: str, **overrides: Any) -> str:
        claims = {**ROLE_CLAIMS[role], **overrides}
        return mint_dev_token(self.settings, role=role, **claims)

    def auth(self, role: str, **overrides: Any) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.token(role, **overrides)}

    def client(self, service: str, address: str | None = None) -> FlaskClient:
        client = self.apps[service].test_client()
        client.environ_base["REMOTE_ADDR"] = address or fresh_address()
        return client


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


@pytest.fixture(scope="session")
def services(infra: Infrastructure, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Services]:
    var = tmp_path_factory.mktemp("security")
    dbs = {service: infra.new_database(service) for service in SERVICE_MODULES}
    prepare(dbs)
    # STREAM_MAX_S: a live (SSE) stream ends after a second instead of minutes
    env = {"VAR_DIR": str(Path(var) / "var"), "KAFKA_BOOTSTRAP_SERVERS": infra.kafka,
           "STREAM_MAX_S": "1"}
    for service, url in dbs.items():
        env[f"{SERVICE_INFO[service][0]}_DATABASE_URL"] = url
    apps = {}
    for service in SERVICE_MODULES:
        app = bootstrap_of(service).create_app(Settings.from_env(service, env))
        app.config["TESTING"] = False  # errors must go through the real handlers
        apps[service] = app
    yield Services(env=env, apps=apps)
    for app in apps.values():
        app.extensions["db"].dispose()
