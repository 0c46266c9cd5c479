"""HSDS import and export against PostgreSQL: API, CLI, reports, idempotency, round trip."""
from __future__ import annotations

import copy
import csv
import io
import json
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hsds_examples import CONTACT_IDS, with_contacts
from registry_harness import PROBLEM, Harness
from sqlalchemy import select, update
from sqlalchemy import text as sql_text

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


def test_a_chunk_the_database_refuses_is_redone_record_by_record_and_counted_once(
        reg: Harness) -> None:
    """A chunk the database refuses is rolled back and its records redone one transaction
    each: what the failed attempt counted (unchanged, rejected before writing, warnings)
    must not stay in the report next to the retry's own counts."""
    assert importer.import_source(reg.db, sources.from_json([_example()]),
                                  default_radius_km=25).created == 1
    unchanged = _example()
    ages = _example()
    ages["id"] = "55555555-5555-4555-8555-555555555555"
    ages["minimum_age"], ages["maximum_age"] = 40, 12
    refused = _example()  # valid HSDS, but a phone number longer than the column holds
    refused["id"] = "66666666-6666-4666-8666-666666666666"
    refused["phones"][0] |= {"id": "66666666-0000-4666-8666-666666666666",
                             "number": "1" * 150}
    del refused["service_at_locations"]
    refused["service_areas"] = [{"id": "66666666-1111-4666-8666-666666666666",
                                 "extent": "geohashes=gcpv"}]
    warned = copy.deepcopy(refused)
    warned["id"] = "77777777-7777-4777-8777-777777777777"
    warned["phones"] = []
    warned["languages"][0]["code"] = "not a tag"
    warned["service_areas"][0]["id"] = "77777777-1111-4777-8777-777777777777"
    for i, attribute in enumerate(warned["attributes"]):  # ids are global, not per service
        attribute["id"] = f"77777777-2222-4777-8777-{i:012d}"
    report = importer.import_source(
        reg.db, sources.from_json([unchanged, ages, refused, warned]), default_radius_km=25,
        chunk_size=10)
    assert (report.created, report.updated, report.unchanged, report.rejected) == (1, 0, 1, 2)
    assert sorted((r["record"], r["status"]) for r in report.records) == [
        (f"service {ages['id']}", "rejected"), (f"service {refused['id']}", "rejected"),
        (f"service {warned['id']}", "imported")]
    reasons = {r["record"]: r.get("errors") or r.get("warnings") for r in report.records}
    [refusal] = reasons[f"service {refused['id']}"]
    assert refusal.startswith("database refused the record")
    assert any("languages.0.code" in w for w in reasons[f"service {warned['id']}"])
    assert reg.count("service") == 2  # nothing of `ages` or `refused`
    # `warned`, then the first service again: its organization was written anew
    assert [e.subject for e in reg.outbox()] == [EXAMPLE_ID, warned["id"], EXAMPLE_ID]


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


def _assert_contacts_exported(docs: list[dict[str, Any]]) -> None:
    """The example's contacts come back under the owner they were imported under, with
    every field and their phone."""
    [doc] = [d for d in docs if d["id"] == EXAMPLE_ID]
    sal = doc["service_at_locations"][0]
    found = {"organization": doc["organization"]["contacts"], "service": doc["contacts"],
             "service_at_location": sal["contacts"], "location": sal["location"]["contacts"]}
    for level, [c] in found.items():
        assert (c["id"], c["name"], c["title"], c["department"], c["email"]) == (
            CONTACT_IDS[level], f"{level.title()} Contact", f"{level} lead", "Intake",
            f"{level}@example.org")
        [phone] = c["phones"]
        assert (phone["number"], phone["extension"], phone["description"]) == (
            "+1 206 555 0100", 7, f"{level} desk")
    assert found["service_at_location"][0]["service_at_location_id"] == sal["id"]
    assert found["location"][0]["location_id"] == sal["location"]["id"]


def test_export_validates_and_import_export_import_is_lossless(
        reg: Harness, make_settings: Callable[..., Settings]) -> None:
    synthetic.seed_city(reg.db, 40, seed=11)
    _post(reg, with_contacts(_example()))
    first = _export(reg)
    assert len(first) == 41
    assert [p for d in first for p in validation.validate_service(d)] == []
    _assert_contacts_exported(first)
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
    _post(reg, with_contacts(_example()))
    resp = reg.client.get("/v1/export/hsds?format=datapackage", headers=reg.auth("admin"))
    assert (resp.status_code, resp.mimetype) == (200, "application/zip")
    with zipfile.ZipFile(io.BytesIO(resp.data)) as zf:
        files = {n: zf.read(n).decode() for n in zf.namelist()}
    assert "datapackage.json" in files and "services.csv" in files
    src = sources.from_tables({k: v for k, v in files.items() if k.endswith(".csv")})
    assert src.rejected == [] and len(src.services) == 26
    assert sorted(r["id"] for r in csv.DictReader(io.StringIO(files["contacts.csv"]))) == sorted(
        CONTACT_IDS.values())
    phones = {r["contact_id"]: r for r in csv.DictReader(io.StringIO(files["phones.csv"]))
              if r["contact_id"]}
    assert sorted(phones) == sorted(CONTACT_IDS.values())
    other = _fresh(make_settings)
    try:
        assert _post(other, resp.data, content_type="application/zip").json["created"] == 26
        assert _export(other) == _export(reg)
        _assert_contacts_exported(_export(other))
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


def _stored_snapshot(reg: Harness, service_id: str) -> dict[str, Any]:
    """The snapshot read back from the tables, through the full event contract."""
    from provider_registry import queries
    with reg.db.uow() as uow:
        data = queries.snapshot_of(uow.session, service_id)
    return events.new_event(events.PROVIDER_SERVICE_UPSERTED, subject=service_id, sequence=1,
                            data=data, source="test").data


def _payload_data(reg: Harness) -> dict[str, dict[str, Any]]:
    table = reg.db.metadata.tables["outbox"]
    with reg.db.engine.connect() as conn:
        rows = [json.loads(r.payload) for r in conn.execute(select(table).order_by(table.c.id))]
    return {p["subject"]: p["data"] for p in rows}


def test_import_snapshots_are_built_in_memory_exactly_as_the_stored_ones(reg: Harness) -> None:
    """Snapshots come from the imported records, not from re-reading the rows: each must be
    exactly (JSON types included: 25.0 not 25, 51.0 not 51) the snapshot of the stored
    service, whose organization (name, channels) and live capacity come from the database."""
    org = reg.client.post("/v1/organizations", headers=reg.auth("admin"), json={
        "name": "Existing Org", "notification_channels": ["email", "in_app"]}).json["id"]
    docs, _ = synthetic.city(12, seed=21, today=datetime.now(UTC).date())
    whole = _example()  # no readable service area: default radius; whole-degree coordinates
    whole["service_at_locations"][0]["location"].update(latitude=51, longitude=0)
    orphan, shared = synthetic.city(2, seed=22, today=datetime.now(UTC).date())[0]
    orphan["organization_id"] = org  # an organization that is stored, not in the file
    del orphan["organization"]
    for sal in orphan["service_at_locations"]:
        sal["location"]["organization_id"] = org
    # a site another record of the same chunk carries too, with another name: the later
    # record's version is written, and both snapshots must show it
    shared["service_at_locations"] = copy.deepcopy(docs[4]["service_at_locations"][:1])
    shared["service_at_locations"][0].update(id="99999999-9999-4999-8999-999999999999",
                                             service_id=shared["id"])
    shared["service_at_locations"][0]["location"]["name"] = "Renamed by the later record"
    src = sources.from_json([*docs, whole, orphan, shared])
    report = importer.import_source(reg.db, src, default_radius_km=25, chunk_size=500)
    assert (report.created, report.rejected) == (15, 0), report.records
    sent = _payload_data(reg)
    assert len(sent) == 15
    for sid, data in sent.items():
        assert json.dumps(data, sort_keys=True) == json.dumps(_stored_snapshot(reg, sid),
                                                              sort_keys=True), sid
    assert sent[whole["id"]]["service_area"]["radius_km"] == 25.0
    assert sent[orphan["id"]]["notification_channels"] == ["email", "in_app"]
    reg.client.put(f"/v1/services/{docs[0]['id']}/capacity", headers=reg.auth("admin"),
                   json={"maximum": 9, "accepting": True})
    changed = copy.deepcopy(docs[0])
    changed["name"] = "Renamed service"
    again = importer.import_source(reg.db, sources.from_json([*docs[1:], changed, whole]),
                                   default_radius_km=25)
    assert (again.updated, again.unchanged, again.created) == (1, 12, 0)
    latest = _payload_data(reg)[docs[0]["id"]]
    assert latest["capacity"]["maximum"] == 9 and latest["service_name"] == "Renamed service"
    assert json.dumps(latest, sort_keys=True) == json.dumps(
        _stored_snapshot(reg, docs[0]["id"]), sort_keys=True)


def test_the_search_table_after_imports_is_exactly_a_full_rebuild(reg: Harness) -> None:
    """The import writes the search rows of its services from the records (and refreshes
    every other service at a site it moved): the table must equal a rebuild from the
    directory tables."""
    docs, _ = synthetic.city(30, seed=8, today=datetime.now(UTC).date())
    importer.import_source(reg.db, sources.from_json(docs), default_radius_km=25,
                           chunk_size=7)
    [neighbour], _ = synthetic.city(1, seed=9, today=datetime.now(UTC).date())
    site = copy.deepcopy(docs[1]["service_at_locations"][0])  # docs[1]'s site, moved
    site.update(id="13131313-1313-4131-8131-131313131313", service_id=neighbour["id"])
    site["location"].update(latitude=47.7001, longitude=-122.2501)
    neighbour["service_at_locations"] = [site]
    report = importer.import_source(reg.db, sources.from_json([neighbour]),
                                    default_radius_km=25)
    assert report.created == 1
    rebuilt = (
        "SELECT sc.service_id, sal.location_id, sc.category, "
        "floor((l.latitude + 90) * 20)::int, l.latitude, l.longitude, "
        "s.interpretation_available FROM service_category sc "
        "JOIN service_at_location sal ON sal.service_id = sc.service_id "
        "JOIN location l ON l.id = sal.location_id JOIN service s ON s.id = sc.service_id")
    with reg.db.engine.connect() as conn:
        stored = set(conn.execute(sql_text(
            "SELECT service_id, location_id, category, lat_band, latitude, longitude, "
            "interpretation_available FROM service_site_need")).all())
        expected = set(conn.execute(sql_text(rebuilt)).all())
    assert stored == expected and len(stored) >= 31 and {r[6] for r in stored} == {True, False}
    moved = [r for r in stored if r[:2] == (docs[1]["id"], site["location_id"])]
    assert moved and all(r[4:6] == (47.7001, -122.2501) for r in moved)  # the neighbour too


def test_bulk_id_lists_reach_postgresql_intact(reg: Harness) -> None:
    """``tables.one_of`` sends a whole id list as one array literal: quotes, backslashes,
    commas, braces, empty strings and NULL must arrive as they were."""
    from sqlalchemy import String, bindparam, cast
    from sqlalchemy.dialects.postgresql import ARRAY

    tricky = ['a"b', "back\\slash", "x,y", "{brace}", " spaced ", "NULL", "", "é", "end\\",
              '\\"', None, "tab\tx", "new\nline"]
    with reg.db.engine.connect() as conn:
        for values in (tricky, [], ["a"], ["", ""], [str(i) for i in range(1000)]):
            literal = bindparam("v", tables.pg_array_literal(values), type_=String)
            got = conn.execute(select(cast(literal, ARRAY(String)))).scalar_one()
            assert got == values


def test_bulk_id_lists_are_one_array_value_not_parsed_again_for_every_row(
        reg: Harness) -> None:
    """A text parameter CAST to an array is an expression PostgreSQL does not fold (the
    array input function is only stable): a sequential scan filtering on it re-parses the
    whole id list for every row (a 1,250-id import chunk took 35 s on 12,500 sites). The
    list must reach the plan as one array value."""
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(50)]
    with reg.db.uow() as uow:
        session = uow.session
        query = select(tables.location.c.id).where(
            tables.one_of(session, tables.location.c.id, ids))
        session.execute(sql_text("SET LOCAL enable_indexscan = off"))
        session.execute(sql_text("SET LOCAL enable_bitmapscan = off"))  # filter every row
        compiled = query.compile(session.get_bind())
        plan = session.connection().exec_driver_sql(
            "EXPLAIN " + str(compiled), compiled.params).scalars().all()
    [condition] = [line for line in plan if "Filter" in line]
    assert "ANY ('{" in condition and "cstring" not in condition, condition[-120:]


def test_bulk_events_keep_every_byte_of_their_data_and_count_sequences_per_service(
        reg: Harness) -> None:
    """emit_many writes the outbox by COPY on PostgreSQL: backslashes, quotes, tabs,
    newlines and non-ASCII text must come back exactly, and each service's events number
    1, 2, ... whatever else the batch holds."""
    first = _example()
    first["name"] = 'Caf\u00e9 \\N \\\\ "quoted"\ttab\nline \u2603 \U0001f3e0'
    second = _example()
    second["id"] = "88888888-8888-4888-8888-888888888888"
    second["service_at_locations"][0] |= {"id": "88888888-0000-4888-8888-888888888888"}
    for i, attribute in enumerate(second["attributes"]):
        attribute["id"] = f"88888888-2222-4888-8888-{i:012d}"
    second["phones"][0]["id"] = "88888888-1111-4888-8888-888888888888"
    assert importer.import_source(reg.db, sources.from_json([first, second]),
                                  default_radius_km=25).created == 2
    first["description"] = "Changed."
    assert importer.import_source(reg.db, sources.from_json([first]),
                                  default_radius_km=25).updated == 1
    envs = reg.outbox()
    assert [(e.subject, e.sequence) for e in envs] == [
        (EXAMPLE_ID, 1), (second["id"], 1), (EXAMPLE_ID, 2), (second["id"], 2)]  # the
    # last: `second` shares the organization and site that the re-import wrote again
    assert envs[0].data["service_name"] == envs[2].data["service_name"] == first["name"]


def test_reimporting_changed_contacts_updates_them_in_place_and_never_duplicates(
        reg: Harness) -> None:
    doc = with_contacts(_example())
    assert _post(reg, doc).json["created"] == 1
    assert (reg.count("contact"), reg.count("phone")) == (4, 5)
    assert _post(reg, doc).json["unchanged"] == 1
    doc["contacts"][0]["name"] = "Renamed"
    doc["contacts"][0]["phones"][0]["number"] = "+1 206 555 0199"
    del doc["service_at_locations"][0]["location"]["contacts"]
    assert _post(reg, doc).json["updated"] == 1
    assert (reg.count("contact"), reg.count("phone")) == (3, 4)
    [exported] = _export(reg)
    [c] = exported["contacts"]
    assert (c["name"], c["phones"][0]["number"]) == ("Renamed", "+1 206 555 0199")
    assert exported["service_at_locations"][0]["location"]["contacts"] == []
    assert importer.import_source(reg.db, sources.from_json(
        {**doc["organization"], "id": doc["organization"]["id"],
         "contacts": [{"id": CONTACT_IDS["organization"], "name": "Org Desk"}]}),
        default_radius_km=25).organizations == 1
    [exported] = _export(reg)
    assert [(c["id"], c["name"], c["phones"]) for c in exported["organization"]["contacts"]
            ] == [(CONTACT_IDS["organization"], "Org Desk", [])]
    assert reg.count("contact") == 3


def test_a_contact_naming_another_owner_is_reported_and_nothing_of_its_record_is_written(
        reg: Harness) -> None:
    bad = with_contacts(_example())
    bad["service_at_locations"][0]["contacts"][0]["service_at_location_id"] = (
        "99999999-9999-4999-8999-999999999999")
    org = {"id": "a0000000-0000-4000-8000-000000000001", "name": "Lone Org",
           "description": "no services",
           "contacts": [{"id": "a0000000-0000-4000-8000-000000000002", "name": "Desk",
                         "service_id": "99999999-9999-4999-8999-999999999999"}]}
    report = _post(reg, [bad, org]).json
    assert (report["created"], report["rejected"], report["organizations"]) == (0, 1, 1)
    reasons = {r["record"]: r.get("errors") or r.get("warnings") for r in report["records"]}
    where = "service_at_locations.0.contacts.0.service_at_location_id"
    assert reasons[f"service {EXAMPLE_ID}"] == [f"{where}: differs from the enclosing record"]
    assert reasons[f"organization {org['id']}"] == [
        "contacts.0.service_id: not part of this record; dropped"]
    assert (reg.count("service"), reg.count("contact")) == (0, 1)
    [stored] = reg.get(f"/hsds/organizations/{org['id']}")["contacts"]
    assert (stored["id"], stored["organization_id"], "service_id" in stored) == (
        "a0000000-0000-4000-8000-000000000002", org["id"], False)


def test_contacts_of_a_confidential_site_never_show_and_survive_reimporting_the_export(
        reg: Harness, make_settings: Callable[..., Settings]) -> None:
    from provider_registry.hsds import taxonomy
    doc = with_contacts(_example())
    loc = doc["service_at_locations"][0]["location"]
    loc["attributes"] = [{"id": "0f4c3b0e-9d43-4a8c-9f41-0d1d8a1c2b3a", "link_id": loc["id"],
                          "link_entity": "location",
                          "taxonomy_term": taxonomy.CONFIDENTIAL_TERM}]
    assert _post(reg, doc).json["created"] == 1
    assert reg.count("contact") == 4
    hidden = ("Location Contact", "Service_At_Location Contact", CONTACT_IDS["location"],
              CONTACT_IDS["service_at_location"], "location@example.org")
    sal_id = doc["service_at_locations"][0]["id"]
    exported = reg.get("/v1/export/hsds", role="admin")
    zipped = reg.get("/v1/export/hsds?format=datapackage", role="admin")
    with zipfile.ZipFile(io.BytesIO(zipped)) as zf:
        tabular = "".join(zf.read(n).decode() for n in zf.namelist())
    public = [json.dumps(exported), tabular,
              json.dumps(reg.get(f"/hsds/services/{EXAMPLE_ID}")),
              json.dumps(reg.get("/hsds/services?full=true")),
              json.dumps(reg.get("/hsds/service_at_locations")),
              json.dumps(reg.get(f"/hsds/service_at_locations/{sal_id}")),
              json.dumps(reg.get(f"/hsds/organizations/{ORG_ID}?full_service=true"))]
    for text in public:
        assert not [h for h in hidden if h in text]
    for i in (0, 1, 2, 3, 5, 6):  # the service's and organization's own contacts do show
        assert "Service Contact" in public[i] and "Organization Contact" in public[i]
    [exported_doc] = exported
    assert [c["id"] for c in exported_doc["contacts"]] == [CONTACT_IDS["service"]]
    again = importer.import_source(reg.db, sources.from_json(exported), default_radius_km=25)
    assert (again.updated, again.rejected) == (1, 0)
    assert reg.count("contact") == 4  # the hidden site's contacts are kept, not dropped
    with reg.db.engine.connect() as conn:
        kept = conn.execute(select(tables.contact.c.id, tables.contact.c.location_id,
                                   tables.contact.c.service_at_location_id)
                            .order_by(tables.contact.c.id)).all()
        phones = conn.execute(select(tables.phone.c.contact_id).where(
            tables.phone.c.contact_id.is_not(None))).scalars().all()
    assert (CONTACT_IDS["location"], loc["id"], None) in kept
    assert (CONTACT_IDS["service_at_location"], None, sal_id) in kept
    assert sorted(phones) == sorted(CONTACT_IDS.values())


def test_deleting_a_service_or_organization_through_the_api_takes_their_contacts_along(
        reg: Harness) -> None:
    assert _post(reg, with_contacts(_example())).json["created"] == 1
    assert reg.client.delete(f"/v1/services/{EXAMPLE_ID}",
                             headers=reg.auth("admin")).status_code == 204
    with reg.db.engine.connect() as conn:
        left = set(conn.execute(select(tables.contact.c.id)).scalars())
    assert left == {CONTACT_IDS["organization"], CONTACT_IDS["location"]}
    with reg.db.engine.connect() as conn:
        phones = set(conn.execute(select(tables.phone.c.contact_id)).scalars())
    assert phones == left  # the service's phone went with it (the example's only other)
    assert reg.client.delete(f"/v1/organizations/{ORG_ID}",
                             headers=reg.auth("admin")).status_code == 204
    assert (reg.count("contact"), reg.count("phone")) == (0, 0)


def test_reimporting_the_export_keeps_a_confidential_sites_hidden_details(
        reg: Harness) -> None:
    """The export hides a confidential site's coordinates, addresses and phones (even an
    admin's); importing that export again, as a restore or a move would, must not erase what
    the directory holds for it."""
    from provider_registry.hsds import taxonomy
    doc = _example()
    loc = doc["service_at_locations"][0]["location"]
    loc["attributes"] = [{"id": "0f4c3b0e-9d43-4a8c-9f41-0d1d8a1c2b3a", "link_id": loc["id"],
                          "link_entity": "location",
                          "taxonomy_term": taxonomy.CONFIDENTIAL_TERM}]
    loc["phones"] = [{"id": "5b1e8f7a-3c2d-4e6f-8a9b-0c1d2e3f4a5b", "number": "+1 206 555 0100"}]
    assert _post(reg, doc).json["created"] == 1

    def stored() -> tuple[Any, ...]:
        with reg.db.engine.connect() as conn:
            site = conn.execute(select(tables.location.c.latitude, tables.location.c.longitude)
                                .where(tables.location.c.id == loc["id"])).one()
            addresses = conn.execute(select(tables.address.c.address_1).where(
                tables.address.c.location_id == loc["id"])).scalars().all()
            phones = conn.execute(select(tables.phone.c.number).where(
                tables.phone.c.location_id == loc["id"])).scalars().all()
        return tuple(site), sorted(addresses), sorted(phones)

    before = stored()
    assert before[0][0] is not None and before[1] and before[2], before
    exported = reg.get("/v1/export/hsds", role="admin")
    assert loc["addresses"][0]["address_1"] not in json.dumps(exported)
    again = importer.import_source(reg.db, sources.from_json(exported), default_radius_km=25)
    assert (again.updated, again.rejected) == (1, 0)
    assert stored() == before
