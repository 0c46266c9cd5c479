"""The per-service CLI (`api`, `worker`, `migrate`), built the same way for every service."""
from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import click

from . import db as dbkit
from . import failpoints
from .runtime import run_worker, serve_api


def service_group(bootstrap: ModuleType) -> click.Group:
    """``bootstrap`` exposes SERVICE, MIGRATIONS, load_settings, create_app, worker."""

    @click.group(name=bootstrap.SERVICE, help=f"The {bootstrap.SERVICE} service.")
    def group() -> None:
        pass

    @group.command(help="Serve the HTTP API under gunicorn.")
    def api() -> None:
        settings = bootstrap.load_settings()
        failpoints.configure(settings.get("FAILPOINTS"))
        serve_api(lambda: bootstrap.create_app(settings), settings)

    @group.command(help="Run the Kafka consumers, the outbox relay and the timers.")
    def worker() -> None:
        settings = bootstrap.load_settings()
        failpoints.configure(settings.get("FAILPOINTS"))
        database, spec = bootstrap.worker(settings)
        sys.exit(run_worker(settings, database, spec))

    @group.command(help="Upgrade the service's database to the latest migration.")
    @click.option("--revision", default="head", show_default=True)
    def migrate(revision: str) -> None:
        settings = bootstrap.load_settings()
        dbkit.run_migrations(settings.database_url, Path(bootstrap.MIGRATIONS), revision)
        click.echo(f"{bootstrap.SERVICE}: database at {revision}")

    @group.command(name="makemigration", help="Autogenerate a migration (development).")
    @click.argument("message")
    def makemigration(message: str) -> None:
        from .migrate import make_revision

        make_revision(Path(bootstrap.MIGRATIONS), message)

    return group
