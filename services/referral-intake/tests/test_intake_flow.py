"""referral-intake against PostgreSQL: intake, encryption at rest, proposals, views."""
from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, text

from referral_intake import bootstrap
from referral_intake.tables import offers, referrals
from servicekit import events, geo
from servicekit.auth import mint_dev_token
from servicekit.db import Database, run_migrations
from servicekit.settings import Settings

pytestmark = pytest.mark.integration

CANARY_PHONE = "+15550123999"


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    s = make_settings("referral-intake")
    run_migrations(s.database_url, bootstrap.MIGRATIONS)
    return s


@pytest.fixture
def client(settings: Settings) -> Iterator[FlaskClient]:
    app = bootstrap.create_app(settings)
    yield app.test_client()
    app.extensions["db"].dispose()


def _auth(settings: Settings, role: str, sub: str, **claims: Any) -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_dev_token(settings, sub=sub, role=role, **claims)}


def _body(**over: Any) -> dict[str, Any]:
    body = {"need": "housing", "urgency": "urgent",
            "subject": {"given_name": "Marisol", "family_name": "Canaryfield", "age": 29,
                        "phone": CANARY_PHONE, "email": "marisol@example.org"},
            "location": {"lat": 47.61, "lon": -122.33}, "notes": "canary-notes",
            "consent": {"share_with_provider": True, "referrer_updates": "full",
                        "contact_methods": ["phone"], "obtained_via": "verbal"}}
    body.update(over)
    return body


def _outbox(settings: Settings) -> list[events.Envelope]:
    db = Database(settings.database_url, bootstrap.metadata)
    with db.engine.connect() as c:
        rows = c.execute(text("SELECT payload FROM outbox ORDER BY id")).scalars().all()
    db.dispose()
    return [events.decode(bytes(r)) for r in rows]


def test_submission_encrypts_pii_at_rest_and_emits_a_pii_free_event(
        client: FlaskClient, settings: Settings) -> None:
    resp = client.post("/v1/referrals", json=_body(),
                       headers=_auth(settings, "officer", "o1", agency="pd"))
    assert resp.status_code == 201
    db = Database(settings.database_url, bootstrap.metadata)
    with db.engine.connect() as c:
        dump = " ".join(str(row) for t in ("subjects", "referrals", "consents", "outbox")
                        for row in c.execute(text(f"SELECT * FROM {t}")))
    db.dispose()
    for secret in (CANARY_PHONE, "Canaryfield", "marisol@example.org", "canary-notes"):
        assert secret not in dump
    [env] = _outbox(settings)
    assert env.type == events.REFERRAL_SUBMITTED and env.subject == resp.get_json()["id"]
    assert env.data["coarse_location"]["geohash"] == geo.encode(47.61, -122.33, 6)
    assert env.data["officer_ref"] != "o1"


def test_same_idempotency_key_replays_and_a_different_body_is_refused(
        client: FlaskClient, settings: Settings) -> None:
    h = {**_auth(settings, "officer", "o1", agency="pd"), "Idempotency-Key": "retry-123456"}
    first = client.post("/v1/referrals", json=_body(), headers=h)
    second = client.post("/v1/referrals", json=_body(), headers=h)
    assert second.status_code == 201 and second.get_json()["id"] == first.get_json()["id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    changed = client.post("/v1/referrals", json=_body(urgency="routine"), headers=h)
    assert changed.status_code == 422 and changed.mimetype == "application/problem+json"
    assert "Idempotency-Key" in changed.get_json()["detail"]
    assert len(_outbox(settings)) == 1


@pytest.mark.parametrize("mutate, field", [
    (lambda b: b["subject"].update(phone="12345"), "subject.phone"),
    (lambda b: b["subject"].update(birth_date="2999-01-01", age=None), "subject.birth_date"),
    (lambda b: b["location"].update(lat=123), "location.lat"),
    (lambda b: b.update(need="pizza"), "need"),
    (lambda b: b.pop("consent"), "consent"),
    (lambda b: b.update(role="admin"), "role"),
])
def test_invalid_referral_is_a_problem_naming_the_field(
        client: FlaskClient, settings: Settings, mutate: Callable[[dict[str, Any]], None],
        field: str) -> None:
    body = _body()
    mutate(body)
    body["subject"] = {k: v for k, v in body["subject"].items() if v is not None}
    resp = client.post("/v1/referrals", json=body,
                       headers=_auth(settings, "officer", "o1", agency="pd"))
    assert resp.status_code == 422 and resp.mimetype == "application/problem+json"
    assert field in resp.get_json()["detail"]
    assert _outbox(settings) == []


def _propose(settings: Settings, referral_id: str, service: str, org: str) -> events.Envelope:
    return events.new_event(events.ROUTING_PROPOSED, subject=referral_id, sequence=1, source="t",
                            data={"referral_id": referral_id, "attempt": 1, "service_id": service,
                                  "organization_id": org, "score": 1.0, "reasons": [],
                                  "eliminated": {}, "proposed_at": "2026-01-01T00:00:00Z"})


def test_proposal_becomes_an_offer_once_and_a_second_is_voided(
        client: FlaskClient, settings: Settings) -> None:
    from referral_intake import handlers

    rid = client.post("/v1/referrals", json=_body(),
                      headers=_auth(settings, "officer", "o1", agency="pd")).get_json()["id"]
    ctx = client.application.extensions["intake_ctx"]
    db: Database = client.application.extensions["db"]
    org, service = str(uuid.uuid4()), str(uuid.uuid4())
    with db.transaction() as s:
        handlers.on_routing_proposed(s, ctx, _propose(settings, rid, service, org))
    with db.transaction() as s:
        handlers.on_routing_proposed(s, ctx, _propose(settings, rid, str(uuid.uuid4()), org))
    with db.engine.connect() as c:
        assert c.execute(select(referrals.c.status).where(referrals.c.id == rid)).scalar() == \
            "offered"
        assert c.execute(select(offers.c.service_id)).scalars().all() == [service]
    answers = [e for e in _outbox(settings) if e.type == events.REFERRAL_STATUS_CHANGED]
    assert [(a.data["to_status"], a.data["reason_code"]) for a in answers] == [
        ("offered", None), ("offered", "proposal_void")]
    provider = client.get(f"/v1/referrals/{rid}", headers=_auth(settings, "provider", "s",
                                                                 org=org)).get_json()
    assert provider["contact"]["phone"] == CANARY_PHONE and provider["offer"]["status"] == "open"
    stranger = client.get(f"/v1/referrals/{rid}",
                          headers=_auth(settings, "provider", "s", org=str(uuid.uuid4())))
    assert stranger.status_code == 404
    supervisor = client.get(f"/v1/referrals/{rid}",
                            headers=_auth(settings, "supervisor", "sv", agency="pd")).get_json()
    assert "contact" not in supervisor or supervisor["contact"] is None
    assert CANARY_PHONE not in str(supervisor)


def test_unknown_query_parameter_is_rejected(client: FlaskClient, settings: Settings) -> None:
    resp = client.get("/v1/referrals?limit=5&officer_name=x",
                      headers=_auth(settings, "officer", "o1", agency="pd"))
    assert resp.status_code == 422 and "officer_name" in resp.get_json()["detail"]
