"""`python -m console api`: serve the console under gunicorn (like the services' apis)."""
from __future__ import annotations

import click

from servicekit.runtime import serve_api

from .app import create_app
from .config import load_config


@click.group(name="console", help="The web console.")
def cli() -> None:
    pass


@cli.command(help="Serve the console under gunicorn.")
def api() -> None:
    config = load_config()
    serve_api(lambda: create_app(config), config.settings)


if __name__ == "__main__":
    cli()
