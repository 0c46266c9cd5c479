"""HSDS import and export against PostgreSQL: API, CLI, reports, idempotency, round trip."""
from __future__ import annotations

import copy
import io
import json
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from registry_harness import PROBLEM, Harness
from sqlalchemy import select, update

from provider_registry import bootstrap, synthetic, tables
from provider_registry.__main__ import cli
from provider_registry.hsds import importer, sources, validation
from servicekit import events
from servicekit.db import Database, run_migrations
from servicekit.settings import Settings

pytestmark = pytest.mark.integration
DATA = Path(__file__).parent / "data"
EXAMPLE_ID = "ac148810-d857-441c-9679-408f346de14b"
ORG_ID = "d9d5e0f5-d3ce-4f73-9a2f-4dd0ecc6c610"


def _example() -> dict[str, Any]:
    return json.loads((DATA / "service_full.json").read_text())


def _post(reg: Harness, body: bytes | Any, content_type: str = "application/json",
          role: str = "admin") -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    org = ORG_ID if role == "provider" else None
    return reg.client.post("/v1/import/hsds", data=data, content_type=content_type,
                           headers=reg.auth(role, org))


def _zip_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in folder.glob("*.csv"):
            zf.write(path, f"hsds/{path.name}")
    return buf.getvalue()


def test_importing_a_service_full_publishes_its_snapshot_and_reimporting_changes_nothing(
        reg: Harness) -> None:
    resp = _post(reg, _example())
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert (resp.json["created"], resp.json["rejected"]) == (1, 0)
    [env] = reg.outbox()
    assert (env.type, env.subject) == (events.PROVIDER_SERVICE_UPSERTED, EXAMPLE_ID)
    assert env.data["organization_id"] == ORG_ID
    assert env.data["languages"] == ["ur"] and env.data["interpretation_available"] is True
    assert env.data["schedule"]["timezone"] == "Etc/GMT-3"  # HSDS offset +3
    assert env.data["capacity"] == {"maximum": 0, "accepting": False, "available": None}
    again = _post(reg, _example())
    assert (again.json["created"], again.json["updated"], again.json["unchanged"]) == (0, 0, 1)
    assert len(reg.outbox()) == 1 and reg.count("service") == 1 and reg.count("phone") == 1
    changed = _example()
    changed["name"] = "Community Counselling (evenings)"
    assert _post(reg, changed).json["updated"] == 1
    assert reg.outbox()[-1].data["service_name"] == "Community Counselling (evenings)"
    assert reg.count("service") == 1 and reg.count("location") == 1


def test_import_keeps_live_capacity(reg: Harness) -> None:
    _post(reg, _example())
    resp = reg.client.put(f"/v1/services/{EXAMPLE_ID}/capacity", headers=reg.auth("admin"),
                          json={"maximum": 4, "accepting": True})
    assert resp.status_code == 200, resp.json
    changed = _example()
    changed["description"] = "Now with more counsellors."
    assert _post(reg, changed).json["updated"] == 1
    assert reg.outbox()[-1].data["capacity"]["maximum"] == 4


def test_every_bad_record_is_reported_with_its_reason_and_the_good_ones_import(
        reg: Harness) -> None:
    good = _example()
    impossible = _example()
    impossible["id"] = "11111111-1111-4111-8111-111111111111"
    impossible["service_at_locations"][0]["location"]["latitude"] = 100
    unknown = copy.deepcopy(impossible)
    unknown["id"] = "22222222-2222-4222-8222-222222222222"
    unknown["service_at_locations"][0]["location"]["latitude"] = 51.5
    unknown["beds"] = 3
    orphan = _example()
    orphan["id"] = "33333333-3333-4333-8333-333333333333"
    orphan["organization_id"] = "44444444-4444-4444-8444-444444444444"
    del orphan["organization"]
    ages = _example()
    ages["id"] = "55555555-5555-4555-8555-555555555555"
    ages["minimum_age"], ages["maximum_age"] = 40, 12
    ages["schedules"][0]["opens_at"] = "27:00"
    resp = _post(reg, [good, impossible, unknown, orphan, ages])
    assert resp.status_code == 200
    report = resp.json
    assert (report["created"], report["rejected"]) == (1, 4)
    reasons = {r["record"]: " ".join(r.get("errors", [])) for r in report["records"]}
    assert "impossible coordinates" in reasons[f"service {impossible['id']}"]
    assert "beds: unknown field" in reasons[f"service {unknown['id']}"]
    assert "no such organization" in reasons[f"service {orphan['id']}"]
    assert "minimum_age" in reasons[f"service {ages['id']}"]
    assert "opens_at" in reasons[f"service {ages['id']}"]
    assert reg.count("service") == 1 and len(reg.outbox()) == 1  # nothing half-written
    assert "51.5" not in json.dumps(report)  # reasons never echo values


def test_import_is_admin_only_and_rejects_what_is_not_hsds(reg: Harness) -> None:
    assert _post(reg, _example(), role="provider").status_code == 403
    resp = _post(reg, b"not json at all")
    assert (resp.status_code, resp.mimetype) == (422, PROBLEM)
    assert _post(reg, b"<xml/>", content_type="text/xml").status_code == 415
    assert reg.count("service") == 0


def test_a_datapackage_zip_imports_through_the_api(reg: Harness) -> None:
    resp = _post(reg, _zip_folder(DATA / "datapackage"), content_type="application/zip")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert (resp.json["created"], resp.json["rejected"]) == (1, 0)
    assert reg.count("address") == 1 and reg.count("taxonomy_term") >= 1
    assert _post(reg, _zip_folder(DATA / "datapackage"),
                 content_type="application/zip").json["unchanged"] == 1


def test_the_cli_imports_a_datapackage_folder_with_progress_on_stderr(
        reg: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_DATABASE_URL", reg.settings.database_url)
    result = CliRunner().invoke(cli, ["import", str(DATA / "datapackage")])
    assert result.exit_code == 0, result.output
    assert "imported 1/1 services" in result.stderr
    assert json.loads(result.stdout)["created"] == 1
    assert reg.count("service") == 1 and len(reg.outbox()) == 1


def _export(reg: Harness) -> list[dict[str, Any]]:
    docs = reg.get("/v1/export/hsds", role="admin")
    for doc in docs:
        doc.pop("last_modified")
    return docs  # type: ignore[no-any-return]


def _fresh(make_settings: Callable[..., Settings]) -> Harness:
    settings = make_settings("provider-registry")
    run_migrations(settings.database_url, bootstrap.MIGRATIONS)
    app = bootstrap.create_app(settings)
    return Harness(settings, app.extensions["db"], app.test_client())


def test_export_validates_and_import_export_import_is_lossless(
        reg: Harness, make_settings: Callable[..., Settings]) -> None:
    synthetic.seed_city(reg.db, 40, seed=11)
    _post(reg, _example())
    first = _export(reg)
    assert len(first) == 41
    assert [p for d in first for p in validation.validate_service(d)] == []
    other = _fresh(make_settings)
    try:
        report = _post(other, first).json
        assert (report["created"], report["rejected"]) == (41, 0), report["records"][:3]
        assert _export(other) == first
        snapshots = {e.subject: e.data for e in reg.outbox()}
        copied = {e.subject: e.data for e in other.outbox()}
        for sid, data in snapshots.items():  # routing sees the same service (not capacity)
            assert {**copied[sid], "capacity": None, "updated_at": None, "schedule": None} == {
                **data, "capacity": None, "updated_at": None, "schedule": None}
    finally:
        other.db.dispose()


def test_the_datapackage_export_validates_row_by_row_and_round_trips(
        reg: Harness, make_settings: Callable[..., Settings]) -> None:
    synthetic.seed_city(reg.db, 25, seed=12)
    _post(reg, _example())
    resp = reg.client.get("/v1/export/hsds?format=datapackage", headers=reg.auth("admin"))
    assert (resp.status_code, resp.mimetype) == (200, "application/zip")
    with zipfile.ZipFile(io.BytesIO(resp.data)) as zf:
        files = {n: zf.read(n).decode() for n in zf.namelist()}
    assert "datapackage.json" in files and "services.csv" in files
    src = sources.from_tables({k: v for k, v in files.items() if k.endswith(".csv")})
    assert src.rejected == [] and len(src.services) == 26
    other = _fresh(make_settings)
    try:
        assert _post(other, resp.data, content_type="application/zip").json["created"] == 26
        assert _export(other) == _export(reg)
    finally:
        other.db.dispose()


def test_confidential_locations_never_show_in_export_or_hsds_api_but_routing_keeps_them(
        reg: Harness) -> None:
    org = reg.client.post("/v1/organizations", headers=reg.auth("admin"),
                          json={"name": "Safe Harbor DV"}).json["id"]
    resp = reg.client.post("/v1/services", headers=reg.auth("admin"), json={
        "organization_id": org, "name": "Safe House", "categories": ["domestic_violence"],
        "service_area": {"radius_km": 30}, "schedule": {"always_open": True, "timezone": "UTC"},
        "locations": [{"name": "Undisclosed", "latitude": 47.6111, "longitude": -122.3222,
                       "confidential": True}]})
    assert resp.status_code == 201, resp.json
    sid = resp.json["service_id"]
    [env] = reg.outbox()
    assert env.data["locations"][0]["lat"] == 47.6111 and env.data["locations"][0]["confidential"]
    exported = json.dumps(reg.get("/v1/export/hsds", role="admin"))
    hsds = json.dumps(reg.get(f"/hsds/services/{sid}"))
    search = json.dumps(reg.get("/v1/services?lat=47.6&lon=-122.33&radius_km=5"))
    for text in (exported, hsds, search):
        assert "47.6111" not in text and "-122.3222" not in text
    assert json.loads(search)["items"][0]["distance_km"] == 2  # whole km only
    staff = reg.get(f"/v1/services/{sid}", role="provider", org=org)
    assert staff["locations"][0]["lat"] == 47.6111  # the organization's own staff see it
    again = importer.import_source(reg.db, sources.from_json(json.loads(exported)),
                                   default_radius_km=25)
    assert again.updated == 1
    assert reg.outbox()[-1].data["locations"][0]["lat"] == 47.6111  # coordinates kept


def test_stale_listings_are_flagged_and_filterable(reg: Harness) -> None:
    synthetic.seed_city(reg.db, 10, seed=5)
    reg.execute(update(tables.service).values(last_confirmed=datetime(2025, 1, 1, tzinfo=UTC)))
    fresh = reg.get("/v1/services?limit=1")["items"][0]["service_id"]
    assert reg.client.put(f"/v1/services/{fresh}/capacity", headers=reg.auth("admin"),
                          json={"maximum": 3, "accepting": True}).status_code == 200
    page = reg.get("/v1/services?stale=true&limit=200", role="admin")
    assert page["total"] == 9 and all(i["stale"] for i in page["items"])
    assert [i["service_id"] for i in reg.get("/v1/services?stale=false")["items"]] == [fresh]


def test_seeding_the_same_city_twice_writes_and_emits_nothing_new(reg: Harness) -> None:
    first = synthetic.seed_city(reg.db, 60, seed=9)
    rows = len(reg.outbox())
    second = synthetic.seed_city(reg.db, 60, seed=9)
    assert (first.created, second.created, second.unchanged) == (60, 0, 60)
    assert len(reg.outbox()) == rows == 60
    assert reg.count("service_capacity") == 60


def test_database_for_other_tests_is_untouched(reg: Harness) -> None:
    assert isinstance(reg.db, Database) and reg.count("service") == 0


def test_bulk_import_events_match_full_validation_and_search_finds_imported_sites(
        reg: Harness) -> None:
    """The import validates one snapshot per batch in full and only serialises the others
    (outbox.emit_many validate_each=False): every payload must be exactly what full
    validation gives. The search table is filled in the import's transaction."""
    docs, _ = synthetic.city(30, seed=5, today=datetime.now(UTC).date())
    resp = _post(reg, docs)
    assert resp.json["created"] == 30, resp.json
    table = reg.db.metadata.tables["outbox"]
    with reg.db.engine.connect() as conn:
        payloads = [json.loads(r.payload) for r in conn.execute(select(table))]
    assert len(payloads) == 30
    for p in payloads:
        checked = events.new_event(p["type"], subject=p["subject"], sequence=p["sequence"],
                                   data=p["data"], source="test")
        assert checked.data == p["data"]
    doc = docs[7]
    site = doc["service_at_locations"][0]["location"]
    need = reg.get(f"/v1/services/{doc['id']}")["categories"][0]
    found = reg.get(f"/v1/services?need={need}&lat={site['latitude']}"
                    f"&lon={site['longitude']}&radius_km=0.5&limit=50")
    assert doc["id"] in [i["service_id"] for i in found["items"]]
    assert found["total"] == len(found["items"])
