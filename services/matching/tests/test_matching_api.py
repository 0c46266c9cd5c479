"""Integration tests of matching's HTTP API (Flask test client, PostgreSQL, dev tokens)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from matching_factories import HOME, referral_submitted, service_upserted
from sqlalchemy import func, select

from matching import bootstrap, handlers, tables
from servicekit.auth import mint_dev_token
from servicekit.db import Database
from servicekit.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def api(matching_settings: Settings) -> Iterator[tuple[FlaskClient, Database]]:
    app = bootstrap.create_app(matching_settings)
    db: Database = app.extensions["db"]
    yield app.test_client(), db
    db.dispose()


def bearer(settings: Settings, role: str, agency: str | None = None) -> dict[str, str]:
    token = mint_dev_token(settings, sub=f"{role}-1", role=role, agency=agency)
    return {"Authorization": f"Bearer {token}"}


def seed(db: Database) -> str:
    with db.transaction() as session:
        handlers.on_service_upserted(session, service_upserted("svc-near", km_north=1.0,
                                                               capacity=2))
        handlers.on_service_upserted(session, service_upserted("svc-far", km_north=12.0))
        handlers.on_service_upserted(session, service_upserted("svc-food", categories=["food"]))
    env = referral_submitted(agency="metro-pd")
    with db.transaction() as session:
        handlers.on_referral_submitted(session, env)
    return env.subject


def counts(db: Database) -> tuple[int, ...]:
    with db.engine.connect() as conn:
        return tuple(conn.execute(select(func.count()).select_from(t)).scalar_one()
                     for t in (tables.metadata.tables["outbox"], tables.decisions))


def test_decisions_show_reasons_to_the_agency_supervisor_and_admins(
        api: tuple[FlaskClient, Database], matching_settings: Settings) -> None:
    client, db = api
    rid = seed(db)
    url = f"/v1/referrals/{rid}/decisions"

    resp = client.get(url, headers=bearer(matching_settings, "supervisor", "metro-pd"))
    assert resp.status_code == 200
    [decision] = resp.get_json()["items"]
    assert decision["outcome"] == "proposed" and decision["service_id"] == "svc-near"
    assert decision["attempt"] == 1 and decision["candidates"] == 3
    assert decision["eliminated"]["category"] == 1
    assert {r["code"] for r in decision["reasons"]} >= {"distance", "headroom"}
    assert client.get(url, headers=bearer(matching_settings, "admin")).status_code == 200


@pytest.mark.parametrize(("role", "agency", "status"), [
    ("supervisor", "other-pd", 404), ("officer", "metro-pd", 403), (None, None, 401),
])
def test_decisions_are_hidden_from_everyone_else(
        api: tuple[FlaskClient, Database], matching_settings: Settings, role: str | None,
        agency: str | None, status: int) -> None:
    client, db = api
    rid = seed(db)
    headers = {} if role is None else bearer(matching_settings, role, agency)
    resp = client.get(f"/v1/referrals/{rid}/decisions", headers=headers)
    assert resp.status_code == status
    assert resp.mimetype == "application/problem+json"


def test_load_reports_open_offers_against_capacity(
        api: tuple[FlaskClient, Database], matching_settings: Settings) -> None:
    client, db = api
    seed(db)
    resp = client.get("/v1/load", headers=bearer(matching_settings, "admin"))
    assert resp.status_code == 200
    body = resp.get_json()
    by_id = {item["service_id"]: item for item in body["items"]}
    assert body["total"] == 3
    assert by_id["svc-near"] == {**by_id["svc-near"], "open_offers": 1, "active_cases": 0,
                                 "capacity_max": 2, "load": 1, "headroom": 1}
    assert by_id["svc-far"]["load"] == 0
    assert client.get("/v1/load", headers=bearer(matching_settings, "officer", "metro-pd")
                      ).status_code == 403


def simulate(client: FlaskClient, settings: Settings, **body: Any) -> Any:
    payload = {"need": "housing", "urgency": "urgent", "lat": HOME[0], "lon": HOME[1], **body}
    return client.post("/v1/simulate", json=payload,
                       headers=bearer(settings, "supervisor", "metro-pd"))


def test_simulate_ranks_candidates_and_writes_nothing(
        api: tuple[FlaskClient, Database], matching_settings: Settings) -> None:
    client, db = api
    seed(db)
    before = counts(db)

    resp = simulate(client, matching_settings, age=40, preferred_language="en")
    assert resp.status_code == 200
    body = resp.get_json()
    assert [c["service_id"] for c in body["ranked"]] == ["svc-near", "svc-far"]
    assert body["ranked"][0]["score"] > body["ranked"][1]["score"]
    assert body["ranked"][0]["open_offers"] == 1
    assert body["eliminated"]["category"] == 1
    assert body["candidates_considered"] == 3
    assert counts(db) == before


def test_simulate_reports_eliminations_per_constraint(
        api: tuple[FlaskClient, Database], matching_settings: Settings) -> None:
    client, db = api
    with db.transaction() as session:
        handlers.on_service_upserted(session, service_upserted("svc-kids", age_max=17))
        handlers.on_service_upserted(session, service_upserted("svc-far", km_north=60.0))
    body = simulate(client, matching_settings, age=40).get_json()
    assert body["outcome"] == "exhausted" and body["ranked"] == []
    # svc-far is never read: the spatial index leaves it out, counted under out_of_area
    assert {e["service_id"]: e["code"] for e in body["excluded"]} == {"svc-kids": "age"}
    assert body["eliminated"]["age"] == 1 and body["eliminated"]["out_of_area"] == 1
    assert body["candidates_considered"] == 2


@pytest.mark.parametrize(("field", "value"), [
    ("lat", 91), ("lon", "east"), ("need", "spaceship"), ("urgency", None), ("age", "34"),
    ("age_band", "adult"), ("preferred_language", "english!"), ("flags", ["rich"]),
    ("needs_interpreter", "maybe"),
])
def test_simulate_names_the_bad_field_in_a_problem(
        api: tuple[FlaskClient, Database], matching_settings: Settings, field: str,
        value: Any) -> None:
    client, db = api
    before = counts(db)
    resp = simulate(client, matching_settings, **{field: value})
    assert resp.status_code == 422
    assert resp.mimetype == "application/problem+json"
    assert field in resp.get_json()["detail"]
    assert counts(db) == before


def test_simulate_requires_need_and_location(
        api: tuple[FlaskClient, Database], matching_settings: Settings) -> None:
    client, _ = api
    resp = client.post("/v1/simulate", json={"urgency": "urgent"},
                       headers=bearer(matching_settings, "admin"))
    assert resp.status_code == 422 and resp.mimetype == "application/problem+json"
    detail = resp.get_json()["detail"]
    assert "need" in detail and "lat" in detail and "lon" in detail
    officer = client.post("/v1/simulate", json={"need": "housing"},
                          headers=bearer(matching_settings, "officer", "metro-pd"))
    assert officer.status_code == 403


def test_simulate_rejects_unknown_fields(
        api: tuple[FlaskClient, Database], matching_settings: Settings) -> None:
    client, _ = api
    resp = simulate(client, matching_settings, given_name="Ana")
    assert resp.status_code == 422
    assert resp.mimetype == "application/problem+json"


def test_openapi_documents_the_three_endpoints(api: tuple[FlaskClient, Database]) -> None:
    client, _ = api
    paths = client.get("/openapi.json").get_json()["paths"]
    assert {"/v1/referrals/{referral_id}/decisions", "/v1/load", "/v1/simulate"} <= set(paths)
