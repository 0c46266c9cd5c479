"""Unit tests of the HSDS mapping, validation, open-now and staleness rules: pure, no I/O."""
from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from hsds_examples import CONTACT_IDS, with_contacts

from provider_registry import domain, synthetic
from provider_registry.hsds import bundle, mapping, sources, taxonomy, validation

DATA = Path(__file__).parent / "data"
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _example() -> dict:
    return json.loads((DATA / "service_full.json").read_text())


def test_the_fixed_hsds_example_is_schema_valid_and_unknown_fields_are_reported() -> None:
    doc = _example()
    assert validation.validate_service(doc) == []
    doc["shoe_size"] = 44
    doc["service_at_locations"][0]["location"]["colour"] = "red"
    assert sorted(validation.validate_service(doc)) == [
        "service_at_locations.0.location.colour: unknown field", "shoe_size: unknown field"]


def test_schema_errors_name_the_field_but_never_echo_the_value() -> None:
    doc = _example()
    doc["minimum_age"] = "Jane Canary-Doe"
    [problem] = validation.validate_service(doc)
    assert problem == "minimum_age: must be of type number"
    assert "Canary" not in problem


def test_overnight_hours_are_split_at_midnight_and_a_full_week_is_always_open() -> None:
    errors: list[str] = []
    night = mapping.schedule_of([{"byday": "SU", "opens_at": "20:00", "closes_at": "08:00"}],
                                errors)
    assert night.hours == (domain.OpeningHours("MO", "00:00", "08:00"),
                           domain.OpeningHours("SU", "20:00", "24:00"))
    week = mapping.schedule_of([{"freq": "WEEKLY", "byday": "MO,TU,WE,TH,FR,SA,SU",
                                 "opens_at": "00:00", "closes_at": "23:59", "timezone": -8}],
                               errors)
    assert (week.always_open, week.hours, week.timezone) == (True, (), "Etc/GMT+8")
    assert errors == []


@pytest.mark.parametrize("row, reason", [
    ({"byday": "MO", "opens_at": "25:00", "closes_at": "26:00"}, "opens_at"),
    ({"byday": "XX", "opens_at": "09:00", "closes_at": "17:00"}, "byday"),
    ({"freq": "MONTHLY", "byday": "1MO", "opens_at": "09:00", "closes_at": "17:00"}, "freq"),
    ({"byday": "MO", "opens_at": "09:00", "closes_at": "17:00", "timezone": 5.5}, "timezone"),
])
def test_impossible_or_unsupported_schedules_are_reported(row: dict, reason: str) -> None:
    errors: list[str] = []
    mapping.schedule_of([row], errors)
    assert any(reason in e for e in errors), errors


def test_open_now_follows_daylight_saving_in_the_services_time_zone() -> None:
    hours = domain.Schedule(False, "America/Los_Angeles",
                            (domain.OpeningHours("MO", "09:00", "17:00"),))
    # 16:30 UTC is 09:30 on Monday 9 March 2026 (PDT, UTC-7) but 08:30 a week earlier (PST)
    assert domain.is_open(hours, datetime(2026, 3, 9, 16, 30, tzinfo=UTC))
    assert not domain.is_open(hours, datetime(2026, 3, 2, 16, 30, tzinfo=UTC))
    tokyo = domain.Schedule(False, "Asia/Tokyo", (domain.OpeningHours("TU", "00:00", "09:00"),))
    assert domain.is_open(tokyo, datetime(2026, 3, 9, 16, 30, tzinfo=UTC))  # Tue 01:30 JST


def test_validity_dates_close_a_service_outside_them() -> None:
    always = domain.Schedule(True, "UTC", (), valid_from=date(2026, 1, 1),
                             valid_to=date(2026, 6, 30))
    assert domain.is_open(always, datetime(2026, 3, 1, tzinfo=UTC))
    assert not domain.is_open(always, datetime(2026, 7, 1, tzinfo=UTC))


def test_staleness_counts_days_since_the_last_confirmation() -> None:
    assert domain.is_stale(None, NOW, 90)
    assert domain.is_stale(datetime(2026, 8, 1, tzinfo=UTC), NOW, 90)
    assert not domain.is_stale(datetime(2026, 10, 1, tzinfo=UTC), NOW, 90)


@pytest.mark.parametrize("term, need", [
    ({"code": "BH-1800.8500", "name": "Emergency shelter"}, "housing"),
    ({"code": "RX-8450", "name": "Outpatient"}, "substance_use"),
    ({"name": "Domestic violence hotlines"}, "domestic_violence"),
    ({"name": "Mental health crisis line"}, "mental_health"),
    (taxonomy.need_term("legal"), "legal"),
    ({"name": "Bicycle repair"}, None),
])
def test_taxonomy_terms_map_to_routing_needs(term: dict, need: str | None) -> None:
    assert taxonomy.need_of_term(term) == need


def test_a_service_without_mappable_terms_is_filed_under_other() -> None:
    assert taxonomy.categories_of([{"name": "Bicycle repair"}]) == ["other"]


def test_impossible_coordinates_and_ages_reject_the_record_with_every_reason() -> None:
    doc = _example()
    doc["service_at_locations"][0]["location"]["latitude"] = 100
    doc["minimum_age"] = 200
    with pytest.raises(mapping.RecordError) as caught:
        bundle.bundle_of(doc, known_terms={}, default_radius_km=25, now=NOW)
    reasons = " ".join(caught.value.reasons)
    assert "impossible coordinates" in reasons and "minimum_age" in reasons


def test_a_confidential_marker_makes_the_location_confidential() -> None:
    doc = _example()
    loc = doc["service_at_locations"][0]["location"]
    loc["attributes"] = [{"id": "0f4c3b0e-9d43-4a8c-9f41-0d1d8a1c2b3a", "link_id": loc["id"],
                          "link_entity": "location", "taxonomy_term": taxonomy.CONFIDENTIAL_TERM}]
    b = bundle.bundle_of(doc, known_terms={}, default_radius_km=25, now=NOW)
    assert b.locations[0]["confidential"] is True


def test_datapackage_rows_are_validated_and_a_bad_child_row_rejects_its_service() -> None:
    files = {p.name: p.read_text() for p in (DATA / "datapackage").glob("*.csv")}
    assert [label for label, _ in sources.from_tables(files).services] == [
        "service ac148810-d857-441c-9679-408f346de14b"]
    files["schedules.csv"] = files["schedules.csv"].replace(",3,2005-01-01,3,", ",x,2005-01-01,3,")
    src = sources.from_tables(files)
    assert src.services == []
    assert [r["record"] for r in src.rejected] == [
        "schedules.csv line 2", "service ac148810-d857-441c-9679-408f346de14b"]
    assert src.rejected[0]["errors"] == ["timezone: must be of type number"]


def test_the_synthetic_city_is_deterministic_and_realistic() -> None:
    first, caps = synthetic.city(400, seed=3, today=date(2026, 11, 1))
    again, _ = synthetic.city(400, seed=3, today=date(2026, 11, 1))
    other, _ = synthetic.city(400, seed=4, today=date(2026, 11, 1))
    assert first == again and first != other
    needs = {d["attributes"][0]["taxonomy_term"]["code"] for d in first}
    assert len(needs) >= 9
    assert any(len(d["schedules"]) == 1 and d["schedules"][0].get("description") == "24/7 line"
               for d in first)
    assert any(loc.get("attributes") for d in first for s in d["service_at_locations"]
               for loc in [s["location"]])
    assert all(synthetic.BBOX[0] <= s["location"]["latitude"] <= synthetic.BBOX[1]
               for d in first for s in d["service_at_locations"])
    assert {c.accepting for c in caps.values()} == {True, False}
    assert all(validation.validate_service(copy.deepcopy(d)) == [] for d in first[:50])


# --- datapackage CSV reading: the fast reader keeps csv.DictReader's semantics ------------

def _reference_rows(table: str, text: str) -> list[tuple[dict, dict, list[str]]]:
    """What the registry did before the fast reader: csv.DictReader and a per-cell
    ``_coerce``; kept here as the reference the fast reader must equal."""
    import csv
    import io
    props = validation.table_schemas()[table]["properties"]
    out = []
    for raw in csv.DictReader(io.StringIO(text)):
        row, errors = {}, []
        for key, value in raw.items():
            if key is None:
                errors.append("row: more cells than columns")
            elif value not in (None, ""):
                try:
                    row[key] = sources._coerce(value, props[key]) if key in props else value
                except ValueError:
                    errors.append(f"{key}: must be of type {props[key].get('type')}")
        out.append((raw, row, errors))
    return out


@pytest.mark.parametrize("table, text", [
    ("location", ("id,name,latitude,longitude,colour\n"
                  "a,Site,47.6,-122.3,red\n\n"          # a blank line is skipped
                  "b,,47,-122,\n"                        # whole numbers stay int
                  "c,Too many,1.5,2.5,x,extra,cells\n"   # extra cells
                  "d,Too few\n"                          # missing cells
                  "e,Bad,north,-122.3,\n"                # not a number
                  "f,\"Quoted, comma\",1e2,-0.0,\n")),
    ("service", "id,name,minimum_age,maximum_age,status\n1,S,12,,active\n2,T,x,24.5,\n"),
    ("language", "id,service_id,code\n1,s,es\n2,s,\n3,,vi,,\n"),
    ("phone", "id,number,extension,number\n1,555,12,556\n2,557,,\n"),  # duplicate header
    ("schedule", ""),
    ("schedule", "\n1,2,3\n"),  # a blank header line: every cell is an extra one
])
def test_the_fast_csv_reader_gives_what_csv_dictreader_gave(table: str, text: str) -> None:
    assert list(sources._typed_rows(table, text)) == _reference_rows(table, text)


def test_datapackage_rejections_keep_row_order_line_numbers_and_reasons() -> None:
    ids = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(6)]
    svc = "10000000-0000-4000-8000-000000000000"
    header = "id,service_id,code\n"
    rows = [f"{ids[0]},{svc},es", f"{ids[1]},{svc},", f"{ids[2]},{svc},vi,extra",
            f"{ids[3]},{svc},zz"]
    src = sources.Source()
    tables = sources.read_tables({"languages.csv": header + "\n".join(rows) + "\n"}, src)
    assert [r["id"] for r in tables["language"]] == [ids[0], ids[1], ids[3]]
    assert [(r["record"], r["errors"], r["row_id"], r["owners"]) for r in src.rejected] == [
        ("languages.csv line 4", ["row: more cells than columns"], ids[2], [svc])]
    bad = sources.Source()  # a row breaks the schema: then every row is described, in order
    tables = sources.read_tables({
        "languages.csv": f"{header}{ids[4]},{svc},es\nnot-a-uuid,{svc},es\n{ids[5]},{svc},vi,1\n",
        "phones.csv": f"id,number,colour\n{ids[0]},555,red\n{ids[1]},556,\n"}, bad)
    assert [(r["record"], r["errors"]) for r in bad.rejected] == [
        ("languages.csv line 3", ["id: not a valid uuid"]),
        ("languages.csv line 4", ["row: more cells than columns"]),
        ("phones.csv line 2", ["colour: unknown column"])]
    assert [r["id"] for r in tables["language"]] == [ids[4]]
    assert [r["id"] for r in tables["phone"]] == [ids[1]]  # its colour cell is empty


# --- geohash: bit for bit servicekit.geo.encode ---------------------------------------------

def test_the_fast_geohash_is_bit_for_bit_servicekit_geo_encode() -> None:
    import math
    import random

    from provider_registry import geohash
    from servicekit import geo
    rng = random.Random(5)
    points = [(rng.uniform(-90, 90), rng.uniform(-180, 180)) for _ in range(3000)]
    points += [(rng.randint(-90, 90), rng.randint(-180, 180)) for _ in range(300)]
    for _ in range(400):  # cell edges (exact binary fractions) and the floats next to them
        bits = rng.randint(1, 31)
        lat = -90 + 180 * rng.randint(0, 2 ** bits) / 2 ** bits
        lon = -180 + 360 * rng.randint(0, 2 ** bits) / 2 ** bits
        points += [(a, b) for a in (lat, math.nextafter(lat, -91), math.nextafter(lat, 91))
                   for b in (lon, math.nextafter(lon, -181), math.nextafter(lon, 181))
                   if -90 <= a <= 90 and -180 <= b <= 180]
    points += [(90, 180), (-90, -180), (0.0, -0.0), (-90, 180), (5e-324, -5e-324)]
    for lat, lon in points:
        for precision in range(1, 13):
            assert geohash.encode(lat, lon, precision) == geo.encode(lat, lon, precision), (
                lat, lon, precision)
    for bad in [(float("nan"), 0.0, 9), (91.0, 0.0, 9), (0.0, -181.0, 9), (0.0, 0.0, 13)]:
        assert _refusal(geohash.encode, *bad) == _refusal(geo.encode, *bad) is not None


def _refusal(encode: Any, *args: Any) -> str | None:
    try:
        encode(*args)
    except ValueError as exc:
        return str(exc)
    return None


def test_bulk_work_pauses_the_cyclic_collector_and_always_restores_it() -> None:
    import gc
    assert gc.isenabled()
    with pytest.raises(RuntimeError), sources.gc_paused():
        assert not gc.isenabled()
        raise RuntimeError("a failed import")
    assert gc.isenabled()
    gc.disable()  # someone else paused it: it stays as they left it
    try:
        with sources.gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


# --- contacts ---------------------------------------------------------------------------

def test_contacts_are_kept_at_their_most_specific_owner_with_their_phones() -> None:
    doc = with_contacts(_example())
    sal = doc["service_at_locations"][0]
    b = bundle.bundle_of(doc, known_terms={}, default_radius_km=25, now=NOW)
    owners = {c["id"]: {k: c[k] for k in bundle.CONTACT_OWNERS if c[k]} for c in b.contacts}
    assert owners == {
        CONTACT_IDS["service_at_location"]: {"service_at_location_id": sal["id"]},
        CONTACT_IDS["location"]: {"location_id": sal["location"]["id"]},
        CONTACT_IDS["service"]: {"service_id": doc["id"]},
        CONTACT_IDS["organization"]: {"organization_id": doc["organization"]["id"]}}
    [phone] = next(c for c in b.contacts if c["id"] == CONTACT_IDS["service"])["phones"]
    assert (phone["contact_id"], phone["service_id"], phone["number"], phone["extension"]) == (
        CONTACT_IDS["service"], None, "+1 206 555 0100", "7")
    # the fixed example lists one contact under all four: the service at location keeps it
    plain = bundle.bundle_of(_example(), known_terms={}, default_radius_km=25, now=NOW)
    assert [(c["id"], c["service_at_location_id"]) for c in plain.contacts] == [
        ("1e7efce3-639b-4880-940c-b95cd30cdb50", sal["id"])]


def test_a_contact_naming_another_owner_rejects_the_record_and_a_stray_reference_warns(
        ) -> None:
    doc = with_contacts(_example())
    doc["contacts"][0]["service_id"] = "99999999-9999-4999-8999-999999999999"
    with pytest.raises(mapping.RecordError) as caught:
        bundle.bundle_of(doc, known_terms={}, default_radius_km=25, now=NOW)
    assert caught.value.reasons == ["contacts.0.service_id: differs from the enclosing record"]
    doc = with_contacts(_example())
    doc["contacts"][0]["location_id"] = "99999999-9999-4999-8999-999999999999"
    doc["contacts"][0]["organization_id"] = doc["organization"]["id"]
    b = bundle.bundle_of(doc, known_terms={}, default_radius_km=25, now=NOW)
    [mine] = [c for c in b.contacts if c["id"] == CONTACT_IDS["service"]]
    assert (mine["location_id"], mine["organization_id"]) == (None, doc["organization"]["id"])
    assert "contacts.0.location_id: not part of this record; dropped" in b.warnings


def test_datapackage_contacts_join_their_owner_and_orphans_or_bad_rows_are_reported() -> None:
    files = {p.name: p.read_text() for p in (DATA / "datapackage").glob("*.csv")}
    src = sources.from_tables(files)
    [(_, doc)] = src.services
    # the example's contact names a service at location and an organization that are not
    # in the package: it joins its location, the most specific owner that is
    [loc] = [s["location"] for s in doc["service_at_locations"]]
    assert [c["id"] for c in loc["contacts"]] == ["1e7efce3-639b-4880-940c-b95cd30cdb50"]
    b = bundle.bundle_of(doc, known_terms=src.terms, default_radius_km=25, now=NOW)
    [c] = b.contacts
    assert (c["location_id"], c["service_id"], c["service_at_location_id"]) == (
        loc["id"], doc["id"], None)
    assert any(w.startswith("service_at_locations.0.location.contacts.0.organization_id")
               for w in b.warnings)
    header = files["contacts.csv"].splitlines()[0]
    service_contact = ("c1000000-0000-4000-8000-000000000001,,"
                       "ac148810-d857-441c-9679-408f346de14b,,,Svc,Lead,Intake,svc@example.org")
    orphan = ("c1000000-0000-4000-8000-000000000002,,99999999-9999-4999-8999-999999999999,,,"
              "Nobody,,,")
    files["contacts.csv"] = f"{header}\n{service_contact}\n{orphan}\n"
    files["phones.csv"] += ("c1000000-0000-4000-8000-000000000009,,,,"
                            "c1000000-0000-4000-8000-000000000001,,+1 206 555 0101,,voice,\n")
    src = sources.from_tables(files)
    [(_, doc)] = src.services
    assert [(c["id"], [p["id"] for p in c["phones"]]) for c in doc["contacts"]] == [
        ("c1000000-0000-4000-8000-000000000001", ["c1000000-0000-4000-8000-000000000009"])]
    assert [(r["record"], r["errors"]) for r in src.rejected] == [
        ("contact c1000000-0000-4000-8000-000000000002",
         [sources.ORPHAN_CONTACT])]
    files["contacts.csv"] = files["contacts.csv"].replace("svc@example.org", "not an email")
    src = sources.from_tables(files)
    assert src.services == []
    assert [r["record"] for r in src.rejected] == [
        "contacts.csv line 2", "contact c1000000-0000-4000-8000-000000000002",
        "service ac148810-d857-441c-9679-408f346de14b"]
    assert src.rejected[0]["errors"] == ["email: not a valid email"]
    assert "contact rows of this service are invalid" in src.rejected[2]["errors"]
