"""provider-registry against a real PostgreSQL database: HTTP API, outbox, seed."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from provider_registry import bootstrap, handlers, seed
from servicekit import demo, events, outbox
from servicekit import kafka as kafkakit
from servicekit.auth import mint_dev_token
from servicekit.db import Database, run_migrations
from servicekit.outbox import OutboxRelay
from servicekit.settings import Settings
from servicekit.testing import iter_topic, wait_for

pytestmark = pytest.mark.integration

CANARY = ("Jane Canary-Doe", "+15550100199", "jane.canary@example.org")  # planted, never published
PROBLEM = "application/problem+json"


@dataclass
class Registry:
    settings: Settings
    db: Database
    client: FlaskClient

    def auth(self, role: str, org: str | None = None, sub: str | None = None
             ) -> dict[str, str]:
        agency = "metro-pd" if role in ("officer", "supervisor") else None
        token = mint_dev_token(self.settings, sub=sub or f"{role}-tester", role=role,
                               agency=agency, org=org)
        return {"Authorization": f"Bearer {token}"}

    def outbox(self) -> list[Any]:
        table = self.db.metadata.tables["outbox"]
        with self.db.engine.connect() as conn:
            return list(conn.execute(select(table).order_by(table.c.id)))

    def count(self, table_name: str) -> int:
        table = self.db.metadata.tables[table_name]
        with self.db.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


@pytest.fixture
def registry(make_settings: Callable[..., Settings]) -> Iterator[Registry]:
    settings = make_settings("provider-registry")
    run_migrations(settings.database_url, bootstrap.MIGRATIONS)
    app = bootstrap.create_app(settings)
    yield Registry(settings, app.extensions["db"], app.test_client())
    app.extensions["db"].dispose()


def _org(reg: Registry, name: str = "Harbor Housing Collective") -> str:
    resp = reg.client.post("/v1/organizations", headers=reg.auth("admin"), json={
        "name": name, "description": f"Ask for {CANARY[0]}, {CANARY[1]}"})
    assert resp.status_code == 201, resp.json
    return str(resp.json["id"])


def _service_body(org_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "organization_id": org_id, "name": "Emergency Shelter Intake",
        "description": f"Contact {CANARY[0]} at {CANARY[2]}", "categories": ["housing"],
        "minimum_age": 18, "maximum_age": 120, "languages": ["en", "es"],
        "service_area": {"radius_km": 25}, "schedule": {"always_open": True,
                                                        "timezone": "America/Los_Angeles"},
        "locations": [{"name": f"{CANARY[0]}'s house", "latitude": 47.6062,
                       "longitude": -122.3321}],
        "capacity": {"maximum": 20, "accepting": True}, **overrides,
    }


def _service(reg: Registry, org_id: str) -> str:
    resp = reg.client.post("/v1/services", headers=reg.auth("admin"), json=_service_body(org_id))
    assert resp.status_code == 201, resp.json
    return str(resp.json["service_id"])


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def test_creating_a_service_writes_one_outbox_event_with_the_snapshot_and_no_pii(
        registry: Registry) -> None:
    org_id = _org(registry)
    assert registry.outbox() == []  # an organization without services publishes nothing
    service_id = _service(registry, org_id)
    [row] = registry.outbox()
    env = events.decode(row.payload)  # validates envelope and data against the contract
    assert (row.topic, row.key, row.event_type) == (events.PROVIDER_EVENTS, service_id,
                                                    events.PROVIDER_SERVICE_UPSERTED)
    assert (env.subject, env.sequence, env.source) == (service_id, 1, "provider-registry")
    assert env.data["organization_id"] == org_id
    assert env.data["capacity"] == {"maximum": 20, "accepting": True, "available": None}
    assert env.data["locations"][0]["lat"] == 47.6062
    assert env.data["categories"] == ["housing"]
    assert not _keys(env.data) & events.PII_FIELD_NAMES
    assert not any(c.encode() in row.payload for c in CANARY)


def test_owning_provider_updates_capacity_and_an_upsert_carries_it(registry: Registry) -> None:
    org_id = _org(registry)
    service_id = _service(registry, org_id)
    resp = registry.client.put(f"/v1/services/{service_id}/capacity",
                               headers=registry.auth("provider", org=org_id),
                               json={"maximum": 7, "accepting": False})
    assert resp.status_code == 200, resp.json
    assert resp.json["capacity"] == {"maximum": 7, "accepting": False, "available": None}
    first, second = registry.outbox()
    env = events.decode(second.payload)
    assert env.type == events.PROVIDER_SERVICE_UPSERTED
    assert env.sequence == events.decode(first.payload).sequence + 1
    assert env.data["capacity"] == {"maximum": 7, "accepting": False, "available": None}
    assert env.data["service_name"] == "Emergency Shelter Intake"  # still the full snapshot


@pytest.mark.parametrize("caller", [
    {"role": "provider", "org": "00000000-0000-4000-8000-000000000001"},
    {"role": "officer"}, {"role": "supervisor"},
])
def test_others_cannot_change_capacity_and_nothing_is_written(
        registry: Registry, caller: dict[str, str]) -> None:
    service_id = _service(registry, _org(registry))
    before = registry.outbox()
    resp = registry.client.put(f"/v1/services/{service_id}/capacity",
                               headers=registry.auth(**caller),
                               json={"maximum": 1, "accepting": True})
    assert resp.status_code == 403
    assert resp.mimetype == PROBLEM
    assert resp.json["status"] == 403
    assert registry.outbox() == before
    shown = registry.client.get(f"/v1/services/{service_id}", headers=registry.auth("officer"))
    assert shown.json["capacity"]["maximum"] == 20


def test_a_provider_cannot_create_a_service_for_another_organization(
        registry: Registry) -> None:
    org_id = _org(registry)
    resp = registry.client.post("/v1/services", json=_service_body(org_id), headers=registry.auth(
        "provider", org="00000000-0000-4000-8000-000000000001"))
    assert (resp.status_code, resp.mimetype) == (403, PROBLEM)
    assert registry.count("service") == 0 and registry.outbox() == []


def test_unknown_fields_are_rejected_with_422_naming_them(registry: Registry) -> None:
    org_id = _org(registry)
    resp = registry.client.post("/v1/services", headers=registry.auth("admin"),
                                json=_service_body(org_id, shoe_size=44))
    assert (resp.status_code, resp.mimetype) == (422, PROBLEM)
    assert "shoe_size" in resp.json["detail"] and "shoe_size" in resp.json["errors"]
    service_id = _service(registry, org_id)
    resp = registry.client.put(f"/v1/services/{service_id}/capacity",
                               headers=registry.auth("admin"),
                               json={"maximum": 3, "accepting": True, "beds": 3})
    assert resp.status_code == 422 and "beds" in resp.json["detail"]
    assert registry.count("service") == 1 and len(registry.outbox()) == 1


def test_broken_directory_rules_are_422_naming_the_field(registry: Registry) -> None:
    org_id = _org(registry)
    resp = registry.client.post("/v1/services", headers=registry.auth("admin"),
                                json=_service_body(org_id, minimum_age=30, maximum_age=18))
    assert resp.status_code == 422 and "minimum_age" in resp.json["errors"]
    resp = registry.client.put(f"/v1/services/{_service(registry, org_id)}/capacity",
                               headers=registry.auth("admin"),
                               json={"maximum": 0, "accepting": True})
    assert resp.status_code == 422 and "accepting" in resp.json["errors"]


def test_a_retried_create_with_the_same_idempotency_key_creates_once(
        registry: Registry) -> None:
    org_id = _org(registry)
    headers = {**registry.auth("admin"), "Idempotency-Key": "create-shelter-1"}
    first = registry.client.post("/v1/services", headers=headers, json=_service_body(org_id))
    again = registry.client.post("/v1/services", headers=headers, json=_service_body(org_id))
    assert first.status_code == again.status_code == 201
    assert again.json["service_id"] == first.json["service_id"]
    assert registry.count("service") == 1 and len(registry.outbox()) == 1


def test_unknown_service_is_a_404_problem(registry: Registry) -> None:
    resp = registry.client.get("/v1/services/00000000-0000-4000-8000-0000000000ff",
                               headers=registry.auth("officer"))
    assert (resp.status_code, resp.mimetype) == (404, PROBLEM)


def test_listing_filters_by_need_and_accepting_and_pages(registry: Registry) -> None:
    seed.seed_demo(registry.db)
    officer = registry.auth("officer")

    def ids(query: str) -> tuple[list[str], int]:
        resp = registry.client.get(f"/v1/services?{query}", headers=officer)
        assert resp.status_code == 200, resp.json
        return [i["service_id"] for i in resp.json["items"]], resp.json["total"]

    assert ids("need=youth") == ([demo.DEMO_SERVICE2_ID], 1)
    assert ids("accepting=false") == ([], 0)
    registry.client.put(f"/v1/services/{demo.DEMO_SERVICE_ID}/capacity",
                        headers=registry.auth("provider", org=demo.DEMO_ORG_ID),
                        json={"maximum": 20, "accepting": False})
    assert ids("accepting=false") == ([demo.DEMO_SERVICE_ID], 1)
    page, total = ids("limit=1&offset=1")
    assert total == 2 and len(page) == 1
    assert registry.client.get("/v1/services?colour=red", headers=officer).status_code == 422
    assert registry.client.get("/v1/services").status_code == 401


def test_renaming_an_organization_republishes_its_services(registry: Registry) -> None:
    org_id = _org(registry)
    service_id = _service(registry, org_id)
    resp = registry.client.put(f"/v1/organizations/{org_id}",
                               headers=registry.auth("provider", org=org_id),
                               json={"name": "Harbor Housing", "notification_channels": ["email"]})
    assert resp.status_code == 200, resp.json
    env = events.decode(registry.outbox()[-1].payload)
    assert (env.subject, env.data["organization_name"]) == (service_id, "Harbor Housing")
    assert env.data["notification_channels"] == ["email"]


def test_deleting_a_service_emits_its_removal(registry: Registry) -> None:
    org_id = _org(registry)
    service_id = _service(registry, org_id)
    resp = registry.client.delete(f"/v1/services/{service_id}", headers=registry.auth("admin"))
    assert resp.status_code == 204
    env = events.decode(registry.outbox()[-1].payload)
    assert (env.type, env.subject, env.sequence) == (events.PROVIDER_SERVICE_REMOVED,
                                                     service_id, 2)
    assert registry.count("service") == 0 and registry.count("service_capacity") == 0


def test_seed_is_idempotent(registry: Registry) -> None:
    seed.seed_demo(registry.db)
    after_first = ([r.event_id for r in registry.outbox()], registry.count("service"),
                   registry.count("location"), registry.count("organization"))
    seed.seed_demo(registry.db)
    after_second = ([r.event_id for r in registry.outbox()], registry.count("service"),
                    registry.count("location"), registry.count("organization"))
    assert after_first == after_second
    assert after_first[1:] == (2, 2, 2)
    shelter = registry.client.get(f"/v1/services/{demo.DEMO_SERVICE_ID}",
                                  headers=registry.auth("officer")).json
    assert shelter["capacity"] == {"maximum": 20, "accepting": True, "available": None}
    assert shelter["schedule"]["always_open"] is True
    assert (shelter["age_min"], shelter["age_max"], shelter["languages"]) == (18, 120, ["en", "es"])


def test_seed_never_overwrites_live_capacity(registry: Registry) -> None:
    seed.seed_demo(registry.db)
    registry.client.put(f"/v1/services/{demo.DEMO_SERVICE2_ID}/capacity",
                        headers=registry.auth("provider", org=demo.DEMO_ORG2_ID),
                        json={"maximum": 10, "accepting": False})
    seed.seed_demo(registry.db)
    youth = registry.client.get(f"/v1/services/{demo.DEMO_SERVICE2_ID}",
                                headers=registry.auth("officer")).json
    assert youth["capacity"]["accepting"] is False
    assert [h["byday"] for h in youth["schedule"]["hours"]] == ["MO", "TU", "WE", "TH", "FR"]


def test_republish_all_emits_every_service_again(registry: Registry) -> None:
    seed.seed_demo(registry.db)
    with registry.db.transaction() as session:
        assert handlers.republish_all(session) == 2
    rows = registry.outbox()
    assert len(rows) == 4
    latest = {events.decode(r.payload).subject: events.decode(r.payload) for r in rows}
    assert set(latest) == {demo.DEMO_SERVICE_ID, demo.DEMO_SERVICE2_ID}
    assert all(env.sequence == 2 for env in latest.values())


def test_the_worker_relays_snapshots_to_provider_events(registry: Registry) -> None:
    db, spec = bootstrap.worker(registry.settings)
    assert (spec.relay, spec.consumers) == (True, [])  # the registry consumes nothing yet
    seed.seed_demo(registry.db)
    bootstrap_servers = registry.settings.kafka_bootstrap_servers
    kafkakit.bootstrap_topics(bootstrap_servers, 3, 1)
    producer = kafkakit.make_producer(bootstrap_servers)
    try:
        assert OutboxRelay(db, producer).run_once() == 2
    finally:
        producer.close()
        db.dispose()
    assert outbox.backlog(registry.db) == 0
    wanted = {r.event_id for r in registry.outbox()}

    def published() -> bool:
        seen = {events.decode(m.value).id for m in iter_topic(bootstrap_servers,
                                                                events.PROVIDER_EVENTS)}
        return wanted <= seen

    wait_for(published, timeout=30, message="both snapshots on provider.events")
