"""`referrals <service> makemigration` support: autogenerate a revision against a scratch DB."""
from __future__ import annotations

import tempfile
from pathlib import Path

from alembic import command
from alembic.config import Config

from .db import run_migrations


def make_revision(migrations_dir: Path, message: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/scratch.db"
        run_migrations(url, migrations_dir)
        cfg = Config()
        cfg.set_main_option("script_location", str(migrations_dir))
        cfg.attributes["database_url"] = url
        command.revision(cfg, message=message, autogenerate=True)
