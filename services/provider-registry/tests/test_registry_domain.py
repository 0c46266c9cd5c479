"""Unit tests of provider_registry.domain: pure, no I/O."""
from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provider_registry import domain
from servicekit import events, geo

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
ORG = domain.Organization(id="org-1", name="Harbor Housing Collective",
                          notification_channels=("in_app", "email"))
SITE = domain.Location(id="loc-b", latitude=47.6062, longitude=-122.3321, name="Shelter")
OTHER_SITE = domain.Location(id="loc-a", latitude=47.61, longitude=-122.34)
SERVICE = domain.Service(
    id="svc-1", organization_id="org-1", name="Emergency Shelter Intake", status="active",
    categories=("youth", "housing"), minimum_age=18, maximum_age=120, genders=(),
    populations=(), languages=("en", "es"), interpretation_available=False,
    service_area=domain.ServiceArea(radius_km=25.0),
    schedule=domain.Schedule(always_open=True, timezone="America/Los_Angeles"),
    last_modified=NOW)
CAPACITY = domain.Capacity(maximum=20, accepting=True)


def _publish(data: dict[str, object]) -> events.Envelope:
    return events.new_event(events.PROVIDER_SERVICE_UPSERTED, subject=str(data["service_id"]),
                            sequence=1, data=data, source="provider-registry")


def test_snapshot_satisfies_the_upserted_contract() -> None:
    env = _publish(domain.routing_snapshot(ORG, SERVICE, [SITE], CAPACITY))
    assert env.data["capacity"] == {"maximum": 20, "accepting": True, "available": None}
    assert env.data["notification_channels"] == ["in_app", "email"]
    assert env.data["schedule"] == {"always_open": True, "timezone": "America/Los_Angeles",
                                    "hours": [], "valid_from": None, "valid_to": None}
    assert env.data["updated_at"] == "2026-01-05T12:00:00Z"


def test_snapshot_is_deterministic_whatever_the_input_order() -> None:
    first = domain.routing_snapshot(ORG, SERVICE, [SITE, OTHER_SITE], CAPACITY)
    second = domain.routing_snapshot(ORG, replace(SERVICE, categories=("housing", "youth")),
                                     [OTHER_SITE, SITE], CAPACITY)
    assert first == second
    assert first["categories"] == ["housing", "youth"]
    assert [loc["location_id"] for loc in first["locations"]] == ["loc-a", "loc-b"]


def test_snapshot_locations_carry_coordinates_and_their_geohash_but_no_names() -> None:
    [entry] = domain.routing_snapshot(ORG, SERVICE, [SITE], CAPACITY)["locations"]
    assert entry == {"location_id": "loc-b", "lat": 47.6062, "lon": -122.3321,
                     "geohash": geo.encode(47.6062, -122.3321, 9), "confidential": False}


def test_a_service_nobody_sized_is_published_as_not_accepting() -> None:
    snapshot = domain.routing_snapshot(ORG, SERVICE, [SITE], domain.NO_CAPACITY)
    assert snapshot["capacity"] == {"maximum": 0, "accepting": False, "available": None}


def test_snapshot_refuses_a_service_of_another_organization() -> None:
    with pytest.raises(ValueError):
        domain.routing_snapshot(replace(ORG, id="org-2"), SERVICE, [SITE], CAPACITY)


def test_removal_notice_satisfies_the_removed_contract() -> None:
    data = domain.removal_notice("svc-1", "org-1", NOW)
    env = events.new_event(events.PROVIDER_SERVICE_REMOVED, subject="svc-1", sequence=2,
                           data=data, source="provider-registry")
    assert env.data == {"service_id": "svc-1", "organization_id": "org-1",
                        "removed_at": "2026-01-05T12:00:00Z"}


@pytest.mark.parametrize(("low", "high", "ok"), [
    (18, 120, True), (None, 24, True), (12, None, True), (30, 18, False), (-1, 10, False),
    (0, 131, False),
])
def test_age_range_rule(low: int | None, high: int | None, ok: bool) -> None:
    assert (domain.age_range_errors(low, high) == []) is ok


def test_always_open_services_list_no_hours() -> None:
    schedule = domain.Schedule(always_open=True, timezone="UTC",
                               hours=(domain.OpeningHours("MO", "09:00", "17:00"),))
    assert set(domain.schedule_errors(schedule)) == {"hours"}


def test_hours_must_close_after_they_open_on_the_same_day() -> None:
    overnight = domain.Schedule(always_open=False, timezone="UTC",
                                hours=(domain.OpeningHours("MO", "20:00", "08:00"),))
    split = domain.Schedule(always_open=False, timezone="UTC", hours=(
        domain.OpeningHours("MO", "20:00", "24:00"), domain.OpeningHours("TU", "00:00", "08:00")))
    assert "hours" in domain.schedule_errors(overnight)
    assert domain.schedule_errors(split) == {}


def test_time_zone_must_be_an_iana_name() -> None:
    schedule = domain.Schedule(always_open=True, timezone="Mars/Olympus_Mons")
    assert set(domain.schedule_errors(schedule)) == {"timezone"}


@pytest.mark.parametrize(("capacity", "field"), [
    (domain.Capacity(maximum=0, accepting=True), "accepting"),
    (domain.Capacity(maximum=-1, accepting=False), "maximum"),
    (domain.Capacity(maximum=5, accepting=True, available=6), "available"),
])
def test_capacity_rules(capacity: domain.Capacity, field: str) -> None:
    assert set(domain.capacity_errors(capacity)) == {field}
    with pytest.raises(domain.RuleViolation):
        domain.check_capacity(capacity)


def test_a_full_but_open_service_is_valid_capacity() -> None:
    assert domain.capacity_errors(domain.Capacity(maximum=5, accepting=True, available=0)) == {}
    assert domain.capacity_errors(domain.Capacity(maximum=0, accepting=False)) == {}


def test_a_radius_needs_a_location_to_measure_from() -> None:
    assert domain.area_errors(domain.ServiceArea(radius_km=10.0), 0) != []
    assert domain.area_errors(domain.ServiceArea(radius_km=10.0), 1) == []
    assert domain.area_errors(domain.ServiceArea(radius_km=None, geohashes=("c23n",)), 0) == []
    assert domain.area_errors(domain.ServiceArea(radius_km=None), 3) != []


def test_check_service_names_every_broken_rule() -> None:
    broken = replace(SERVICE, categories=(), minimum_age=40, maximum_age=20)
    with pytest.raises(domain.RuleViolation) as caught:
        domain.check_service(broken, location_count=0)
    assert set(caught.value.errors) == {"categories", "minimum_age", "service_area"}
    domain.check_service(SERVICE, location_count=1)  # the valid one passes


@given(low=st.integers(0, 130), span=st.integers(0, 130), maximum=st.integers(1, 10_000),
       accepting=st.booleans())
def test_any_valid_service_publishes_a_valid_snapshot(low: int, span: int, maximum: int,
                                                      accepting: bool) -> None:
    service = replace(SERVICE, minimum_age=low, maximum_age=min(130, low + span))
    capacity = domain.Capacity(maximum=maximum, accepting=accepting)
    assert domain.service_errors(service, 1) == {}
    env = _publish(domain.routing_snapshot(ORG, service, [SITE], capacity))
    assert env.data["age_min"] <= env.data["age_max"]
