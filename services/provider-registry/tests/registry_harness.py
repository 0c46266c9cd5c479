"""A provider-registry app under test: HTTP client, tokens, outbox and table reads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import func, select

from servicekit import events
from servicekit.auth import mint_dev_token
from servicekit.db import Database
from servicekit.settings import Settings

PROBLEM = "application/problem+json"


@dataclass
class Harness:
    settings: Settings
    db: Database
    client: FlaskClient

    def auth(self, role: str, org: str | None = None) -> dict[str, str]:
        agency = "metro-pd" if role in ("officer", "supervisor") else None
        token = mint_dev_token(self.settings, sub=f"{role}-tester", role=role, agency=agency,
                               org=org)
        return {"Authorization": f"Bearer {token}"}

    def outbox(self) -> list[events.Envelope]:
        table = self.db.metadata.tables["outbox"]
        with self.db.engine.connect() as conn:
            return [events.decode(r.payload)
                    for r in conn.execute(select(table).order_by(table.c.id))]

    def count(self, table_name: str) -> int:
        table = self.db.metadata.tables[table_name]
        with self.db.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())

    def execute(self, statement: Any) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(statement)

    def get(self, url: str, role: str = "officer", org: str | None = None) -> Any:
        resp = self.client.get(url, headers=self.auth(role, org))
        assert resp.status_code == 200, (url, resp.status_code, resp.get_data(as_text=True))
        return resp.json if resp.mimetype == "application/json" else resp.data
