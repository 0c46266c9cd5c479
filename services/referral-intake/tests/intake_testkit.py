"""Helpers of referral-intake's tests: an app on a fresh database, acting as each role,
feeding it matching's proposals, reading its outbox. (A unique module name, so it never
clashes with another folder's helpers when the whole suite runs.)"""
from __future__ import annotations

import itertools
import uuid
from typing import Any

from sqlalchemy import text

from referral_intake import bootstrap, handlers
from servicekit import events
from servicekit.auth import mint_dev_token
from servicekit.db import Database
from servicekit.settings import Settings

CANARY = {"given_name": "Zyxwanda", "family_name": "Quillfeatherby", "phone": "+15550199877",
          "email": "zyx.quill@canary.example", "notes": "canary-narrative-7Q4",
          "birth_date": "1987-06-05"}


def referral_body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "need": "housing", "urgency": "urgent",
        "subject": {"given_name": CANARY["given_name"], "family_name": CANARY["family_name"],
                    "birth_date": CANARY["birth_date"], "phone": CANARY["phone"],
                    "email": CANARY["email"], "preferred_language": "en"},
        "location": {"lat": 47.6101, "lon": -122.3301}, "notes": CANARY["notes"],
        "consent": {"share_with_provider": True, "referrer_updates": "full",
                    "contact_methods": ["phone", "email"], "obtained_via": "verbal"}}
    body.update(over)
    return body


class Intake:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = bootstrap.create_app(settings)
        self.client = self.app.test_client()
        self.db: Database = self.app.extensions["db"]
        self.ctx: handlers.Context = self.app.extensions["intake_ctx"]
        self._attempts = itertools.count(1)

    def h(self, role: str, sub: str, **claims: Any) -> dict[str, str]:
        return {"Authorization": "Bearer " + mint_dev_token(self.settings, sub=sub, role=role,
                                                            **claims)}

    def officer(self, sub: str = "officer-a", agency: str = "pd") -> dict[str, str]:
        return self.h("officer", sub, agency=agency)

    def provider(self, org: str) -> dict[str, str]:
        return self.h("provider", f"staff-{org}", org=org)

    def supervisor(self, agency: str = "pd", sub: str = "sup-1") -> dict[str, str]:
        return self.h("supervisor", sub, agency=agency)

    def admin(self) -> dict[str, str]:
        return self.h("admin", "admin-1")

    def submit(self, headers: dict[str, str] | None = None, **over: Any) -> dict[str, Any]:
        resp = self.client.post("/v1/referrals", json=referral_body(**over),
                                headers=headers or self.officer())
        assert resp.status_code == 201, resp.get_json()
        return resp.get_json()  # type: ignore[no-any-return]

    def propose(self, rid: str, service: str | None = None, org: str | None = None
                ) -> tuple[str, str]:
        service, org = service or str(uuid.uuid4()), org or str(uuid.uuid4())
        env = events.new_event(events.ROUTING_PROPOSED, subject=rid, sequence=next(
            self._attempts), source="matching", data={
                "referral_id": rid, "attempt": 1, "service_id": service,
                "organization_id": org, "score": 1.0, "reasons": [], "eliminated": {},
                "proposed_at": "2026-01-01T00:00:00Z"})
        with self.db.transaction() as s:
            handlers.on_routing_proposed(s, self.ctx, env)
        return service, org

    def offered(self, **over: Any) -> tuple[str, str, str]:
        """A submitted referral with an open offer: (referral id, service id, org id)."""
        rid = self.submit(**over)["id"]
        service, org = self.propose(rid)
        return rid, service, org

    def events(self, event_type: str | None = None) -> list[events.Envelope]:
        with self.db.engine.connect() as c:
            rows = c.execute(text("SELECT payload FROM outbox ORDER BY id")).scalars().all()
        found = [events.decode(bytes(r)) for r in rows]
        return [e for e in found if event_type is None or e.type == event_type]

    def sql(self, statement: str, **params: Any) -> list[Any]:
        with self.db.engine.begin() as c:
            result = c.execute(text(statement), params)
            return list(result) if result.returns_rows else []

    def post(self, path: str, headers: dict[str, str], json: Any = None) -> Any:
        return self.client.post(path, json=json if json is not None else {}, headers=headers)
