"""Canary personal data submitted through the real intake api must not surface in any
service's metrics, in any route or returned URL, in logs, in error bodies, or in any
plaintext database column (only the per-field ciphertext columns may hold it, encrypted)."""
from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text

from servicekit import demo, logs

from .conftest import Services
from .endpoints import endpoints

pytestmark = pytest.mark.security

CANARY = {"given_name": "Canaryella", "family_name": "Pipit-Sentinel",
          "phone": "+15550142857", "email": "canaryella.pipit@example.net"}
NOTE = "canary-note lives behind the old grain silo"
PII_WORDS = ("name", "phone", "email", "birth", "dob", "address", "lat", "lon", "note")


def _referral(**subject: Any) -> dict[str, Any]:
    return {"need": "housing", "urgency": "urgent", "subject": {**CANARY, "age": 52, **subject},
            "location": {"lat": 47.6101, "lon": -122.3421}, "notes": NOTE,
            "consent": {"share_with_provider": True, "referrer_updates": "milestones",
                        "contact_methods": ["phone"], "obtained_via": "verbal"}}


def _values() -> list[str]:
    return [*CANARY.values(), NOTE, "47.6101", "-122.3421"]


def test_canary_pii_never_leaves_the_vault(services: Services,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    officer = services.auth("officer", sub="officer-canary", agency=demo.AGENCY)
    intake = services.client("referral-intake")
    created = intake.post("/v1/referrals", json=_referral(),
                          headers={**officer, "Idempotency-Key": str(uuid.uuid4())})
    assert created.status_code == 201, created.get_data(as_text=True)
    referral_id = created.get_json()["id"]
    # the officer may read it back (so the data really is stored) ...
    assert intake.get(f"/v1/referrals/{referral_id}", headers=officer).status_code == 200
    # ... and a bad value is refused without being echoed
    bad = intake.post("/v1/referrals", json=_referral(phone="Canaryella-555"), headers=officer)
    assert bad.status_code == 422 and "Canaryella-555" not in bad.get_data(as_text=True)

    leaks: list[str] = []
    for name, app in services.apps.items():
        body = services.client(name).get("/metrics").get_data(as_text=True)
        leaks += [f"{name} /metrics: {v}" for v in _values() if v in body]
        for e in endpoints(name, app):
            arguments = [a.lower() for a in e.rule.split("<")[1:]]
            leaks += [f"{e}: route parameter looks personal" for a in arguments
                      if any(w in a for w in PII_WORDS)]
    for header in ("Location", "Content-Location", "Link"):
        leaks += [f"{header} header" for v in _values() if v in created.headers.get(header, "")]
    formatter = logs.JsonFormatter("test")
    lines = [formatter.format(r) for r in caplog.records]
    assert any('"request"' in line for line in lines)  # the access log really was captured
    leaks += [f"log line: {line[:120]}" for line in lines for v in _values() if v in line]
    leaks += _plaintext_leaks(services)
    assert not leaks, "\n".join(leaks)


def _plaintext_leaks(services: Services) -> list[str]:
    """Every row of every table of every service, as text, except ciphertext columns."""
    leaks = []
    for name, app in services.apps.items():
        engine = create_engine(app.extensions["db"].engine.url)
        try:
            with engine.connect() as conn:
                for table in inspect(conn).get_table_names():
                    cols = [c["name"] for c in inspect(conn).get_columns(table)
                            if not c["name"].endswith("_ct") and c["name"] != "wrapped_key"]
                    if not cols:
                        continue
                    select = ", ".join(f'"{c}"::text' for c in cols)
                    for row in conn.execute(text(f'SELECT {select} FROM "{table}"')):
                        joined = " ".join(str(v) for v in row if v is not None)
                        leaks += [f"{name}.{table}: plaintext {v!r}" for v in _values()
                                  if v in joined]
        finally:
            engine.dispose()
    return leaks
