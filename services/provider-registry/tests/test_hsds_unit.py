"""Unit tests of the HSDS mapping, validation, open-now and staleness rules: pure, no I/O."""
from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

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
