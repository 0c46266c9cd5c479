"""Fixtures of the console's tests: the real service apis, served over HTTP on fresh
PostgreSQL databases (no workers: these tests drive the console's pages, not routing)."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from console_testkit import Backend, Served
from flask import Flask

from console.app import create_app
from servicekit import provisioning
from servicekit.settings import SERVICE_MODULES, Settings


@pytest.fixture
def backend(make_settings: Callable[..., Settings]) -> Iterator[Backend]:
    # webhooks to a local address are refused by default; these tests register one
    settings = {s: make_settings(s, WEBHOOK_ALLOW_PRIVATE_TARGETS="1") for s in SERVICE_MODULES}
    provisioning.prepare({s: v.database_url for s, v in settings.items()})
    served: dict[str, Served] = {}
    try:
        for service, s in settings.items():
            served[service] = Served(provisioning.bootstrap_of(service).create_app(s))
        one = next(iter(settings.values()))
        env = {"VAR_DIR": str(one.var_dir), "CONSOLE_INTAKE_URL": served["referral-intake"].url,
               "CONSOLE_REGISTRY_URL": served["provider-registry"].url,
               "CONSOLE_MATCHING_URL": served["matching"].url,
               "CONSOLE_NOTIFICATIONS_URL": served["notifications"].url}
        yield Backend({k: v.url for k, v in served.items()}, settings, env)
    finally:
        for server in served.values():
            server.close()


@pytest.fixture
def console(backend: Backend) -> Flask:
    return create_app(backend.console_config())
