"""Provider directory rules and the routing snapshot (DESIGN.md §3, §7).

Pure: no Flask, SQLAlchemy, Kafka, clock or environment. The snapshot built here is the
``data`` of ``provider.service_upserted``: everything matching and notifications need to
route to a service and to reach its organization, and nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from . import geohash

LOCATION_GEOHASH_PRECISION = 9  # provider sites are public places: about 5 m is fine
MAX_AGE = 130


class RuleViolation(Exception):
    """A change breaks a directory rule; ``errors`` maps field names to messages."""

    def __init__(self, errors: dict[str, list[str]]):
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class OpeningHours:
    """One opening interval on one weekday; ``closes_at`` is later the same day."""

    byday: str  # MO..SU (HSDS schedule.byday)
    opens_at: str  # HH:MM
    closes_at: str  # HH:MM, or 24:00


@dataclass(frozen=True)
class Schedule:
    always_open: bool
    timezone: str  # IANA name
    hours: tuple[OpeningHours, ...] = ()
    valid_from: date | None = None  # HSDS schedule.valid_from/valid_to (inclusive)
    valid_to: date | None = None


@dataclass(frozen=True)
class ServiceArea:
    radius_km: float | None
    geohashes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Capacity:
    """HSDS 3.1 service_capacity (maximum, available) plus the accepting flag."""

    maximum: int
    accepting: bool
    available: int | None = None


NO_CAPACITY = Capacity(maximum=0, accepting=False)  # a service nobody has sized yet


@dataclass(frozen=True)
class Organization:
    id: str
    name: str
    notification_channels: tuple[str, ...]


@dataclass(frozen=True)
class Location:
    id: str
    latitude: float
    longitude: float
    name: str | None = None
    confidential: bool = False  # address and coordinates never shown to people


@dataclass(frozen=True)
class Service:
    id: str
    organization_id: str
    name: str
    status: str
    categories: tuple[str, ...]
    minimum_age: int | None
    maximum_age: int | None
    genders: tuple[str, ...]
    populations: tuple[str, ...]
    languages: tuple[str, ...]
    interpretation_available: bool
    service_area: ServiceArea
    schedule: Schedule
    last_modified: datetime
    last_confirmed: datetime | None = None


# --- rules ---------------------------------------------------------------------------------

def age_range_errors(minimum: int | None, maximum: int | None) -> list[str]:
    if any(a is not None and not 0 <= a <= MAX_AGE for a in (minimum, maximum)):
        return [f"Ages must be between 0 and {MAX_AGE}."]
    if minimum is not None and maximum is not None and minimum > maximum:
        return ["minimum_age must not exceed maximum_age."]
    return []


def _is_time_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ValueError, OSError, KeyError):  # ZoneInfoNotFoundError is a KeyError
        return False
    return True


def schedule_errors(schedule: Schedule) -> dict[str, list[str]]:
    """Opening hours must be unambiguous for matching's open-now check."""
    errors: dict[str, list[str]] = {}
    if not _is_time_zone(schedule.timezone):
        errors["timezone"] = ["Not an IANA time zone."]
    if schedule.always_open and schedule.hours:
        errors["hours"] = ["A service that is always open lists no opening hours."]
    if schedule.valid_from and schedule.valid_to and schedule.valid_from > schedule.valid_to:
        errors["valid_to"] = ["valid_to must not be before valid_from."]
    bad = [h for h in schedule.hours if h.opens_at >= h.closes_at]
    if bad:
        errors.setdefault("hours", []).append(
            "closes_at must be later than opens_at on the same day; split overnight hours "
            "into two days (e.g. MO 20:00-24:00 and TU 00:00-08:00).")
    return errors


def capacity_errors(capacity: Capacity) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    if capacity.maximum < 0:
        errors["maximum"] = ["Must not be negative."]
    elif capacity.accepting and capacity.maximum == 0:
        errors["accepting"] = ["A service with maximum 0 cannot be accepting."]
    if capacity.available is not None and not 0 <= capacity.available <= capacity.maximum:
        errors["available"] = ["Must be between 0 and maximum."]
    return errors


def area_errors(area: ServiceArea, location_count: int) -> list[str]:
    if area.radius_km is not None and area.radius_km < 0:
        return ["radius_km must not be negative."]
    if area.radius_km is None and not area.geohashes:
        return ["Give radius_km (around the service's locations) or geohashes."]
    if area.radius_km is not None and location_count == 0:
        return ["A radius needs at least one location to measure from."]
    return []


def service_errors(service: Service, location_count: int) -> dict[str, list[str]]:
    """Every rule a service must satisfy before it is stored and published."""
    errors: dict[str, list[str]] = {}
    if not service.categories:
        errors["categories"] = ["At least one category is required."]
    if ages := age_range_errors(service.minimum_age, service.maximum_age):
        errors["minimum_age"] = ages
    if area := area_errors(service.service_area, location_count):
        errors["service_area"] = area
    if sched := schedule_errors(service.schedule):
        errors["schedule"] = [f"{k}: {' '.join(v)}" for k, v in sched.items()]
    return errors


def check_service(service: Service, location_count: int) -> None:
    if errors := service_errors(service, location_count):
        raise RuleViolation(errors)


def check_capacity(capacity: Capacity) -> None:
    if errors := capacity_errors(capacity):
        raise RuleViolation({"capacity": [f"{k}: {' '.join(v)}" for k, v in errors.items()]})


# --- snapshot ------------------------------------------------------------------------------

def location_entry(location: Location) -> dict[str, Any]:
    return {"location_id": location.id, "lat": location.latitude, "lon": location.longitude,
            "geohash": geohash.encode(location.latitude, location.longitude,
                                      LOCATION_GEOHASH_PRECISION),
            "confidential": location.confidential}


def _schedule_entry(schedule: Schedule) -> dict[str, Any]:
    return {"always_open": schedule.always_open, "timezone": schedule.timezone,
            "hours": [{"byday": h.byday, "opens_at": h.opens_at, "closes_at": h.closes_at}
                      for h in schedule.hours],
            "valid_from": schedule.valid_from and schedule.valid_from.isoformat(),
            "valid_to": schedule.valid_to and schedule.valid_to.isoformat()}


def is_stale(last_confirmed: datetime | None, now: datetime, stale_after_days: int) -> bool:
    """A listing nobody confirmed within ``stale_after_days`` is stale (never confirmed: stale)."""
    return last_confirmed is None or now - last_confirmed > timedelta(days=stale_after_days)


def is_open(schedule: Schedule, now: datetime) -> bool:
    """Whether the service is open at the aware instant ``now``, read in its own time zone
    (so a 09:00 opening follows daylight-saving changes), within its validity dates."""
    local = now.astimezone(ZoneInfo(schedule.timezone))
    if (schedule.valid_from and local.date() < schedule.valid_from) or (
            schedule.valid_to and local.date() > schedule.valid_to):
        return False
    if schedule.always_open:
        return True
    day, minute = WEEKDAY_CODES[local.weekday()], local.strftime("%H:%M")
    return any(h.byday == day and h.opens_at <= minute < h.closes_at for h in schedule.hours)


WEEKDAY_CODES = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")


def routing_snapshot(org: Organization, service: Service, locations: list[Location],
                     capacity: Capacity) -> dict[str, Any]:
    """The full ``provider.service_upserted`` data of one service (deterministic order)."""
    if service.organization_id != org.id:
        raise ValueError("service does not belong to this organization")
    return {
        "service_id": service.id, "organization_id": org.id,
        "organization_name": org.name, "service_name": service.name,
        "status": service.status, "categories": sorted(set(service.categories)),
        "locations": [location_entry(loc) for loc in sorted(locations, key=lambda x: x.id)],
        "service_area": {"radius_km": service.service_area.radius_km,
                         "geohashes": list(service.service_area.geohashes)},
        "age_min": service.minimum_age, "age_max": service.maximum_age,
        "genders": list(service.genders), "populations": list(service.populations),
        "languages": list(service.languages),
        "interpretation_available": service.interpretation_available,
        "schedule": _schedule_entry(service.schedule),
        "capacity": {"maximum": capacity.maximum, "accepting": capacity.accepting,
                     "available": capacity.available},
        "notification_channels": list(org.notification_channels),
        "updated_at": service.last_modified,
        "last_confirmed_at": service.last_confirmed,
    }


def removal_notice(service_id: str, organization_id: str, removed_at: datetime
                   ) -> dict[str, Any]:
    """The ``provider.service_removed`` data."""
    return {"service_id": service_id, "organization_id": organization_id,
            "removed_at": removed_at}
