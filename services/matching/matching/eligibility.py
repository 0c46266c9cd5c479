"""Hard constraints of matching (DESIGN.md §7), checked in order; the first failure names
the elimination code. Pure, like ``domain`` (whose types it reads but never builds)."""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from servicekit.geo import haversine_km

if TYPE_CHECKING:  # domain imports this module: no import cycle at runtime
    from .domain import Candidate, Referral, Schedule

WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
MAX_AGE = 130


def primary_language(tag: str) -> str:
    return tag.split("-", 1)[0].lower()


def speaks(candidate: Candidate, tag: str) -> bool:
    return primary_language(tag) in {primary_language(t) for t in candidate.languages}


def nearest_km(candidate: Candidate, referral: Referral) -> float | None:
    if not candidate.locations:
        return None
    return min(float(haversine_km(referral.lat, referral.lon, p.lat, p.lon))
               for p in candidate.locations)


def _age_range(referral: Referral) -> tuple[int, int] | None:
    if referral.age is not None:
        return referral.age, referral.age
    band = referral.age_band
    if not band:
        return None
    if band.endswith("+"):
        return int(band[:-1]), MAX_AGE
    low, _, high = band.partition("-")
    return int(low), int(high)


def _minutes(hhmm: str) -> int:
    hours, _, minutes = hhmm.partition(":")
    return int(hours) * 60 + int(minutes)


def _local(schedule: Schedule, now: datetime) -> datetime | None:
    try:
        return now.astimezone(ZoneInfo(schedule.timezone))
    except (ZoneInfoNotFoundError, ValueError):
        return None


def operating(schedule: Schedule, now: datetime) -> bool:
    """Within the schedule's validity dates (HSDS valid_from/valid_to), if it has any."""
    if schedule.valid_from is None and schedule.valid_to is None:
        return True
    local = _local(schedule, now)
    if local is None:
        return False
    today = local.date().isoformat()
    return ((schedule.valid_from is None or schedule.valid_from <= today)
            and (schedule.valid_to is None or today <= schedule.valid_to))


def is_open(schedule: Schedule, now: datetime) -> bool:
    """Open at ``now`` in the service's time zone (hours past midnight count)."""
    if not operating(schedule, now):
        return False
    if schedule.always_open:
        return True
    local = _local(schedule, now)
    if local is None:
        return False  # an unknown zone cannot prove the service is open
    today, yesterday = WEEKDAYS[local.weekday()], WEEKDAYS[(local.weekday() - 1) % 7]
    minute = local.hour * 60 + local.minute
    for hours in schedule.hours:
        opens, closes = _minutes(hours.opens_at), _minutes(hours.closes_at)
        overnight = closes <= opens
        if hours.byday == today and opens <= minute < (24 * 60 if overnight else closes):
            return True
        if hours.byday == yesterday and overnight and minute < closes:
            return True
    return False


# --- hard constraints, in order -----------------------------------------------------------
Check: TypeAlias = "Callable[[Referral, Candidate, datetime], bool]"


def _age_fits(r: Referral, c: Candidate, _now: datetime) -> bool:
    span = _age_range(r)
    if span is None:
        return True  # unknown age: the provider can still decline as not eligible
    low, high = span
    return (c.age_min is None or low >= c.age_min) and (c.age_max is None or high <= c.age_max)


def _gender_fits(r: Referral, c: Candidate, _now: datetime) -> bool:
    if not c.genders or r.gender is None:
        return True
    return r.gender.lower() in {g.lower() for g in c.genders}


def _language_fits(r: Referral, c: Candidate, _now: datetime) -> bool:
    if not (r.needs_interpreter and r.preferred_language):
        return True
    return c.interpretation_available or speaks(c, r.preferred_language)


def in_area(r: Referral, c: Candidate) -> bool:
    """Inside a service-area geohash or within the radius of a location; a service that
    declares neither serves everywhere."""
    if c.radius_km is None and not c.area_geohashes:
        return True
    if any(r.geohash.startswith(g) or g.startswith(r.geohash) for g in c.area_geohashes):
        return True
    distance = nearest_km(c, r)
    return c.radius_km is not None and distance is not None and distance <= c.radius_km


CHECKS: tuple[tuple[str, Check], ...] = (
    ("category", lambda r, c, _: r.need in c.categories),
    ("inactive", lambda r, c, _: c.status == "active"),
    ("not_accepting", lambda r, c, _: c.accepting),
    ("at_capacity", lambda r, c, _: c.load < c.capacity_max),
    ("age", _age_fits),
    ("gender", _gender_fits),
    ("population", lambda r, c, _: not c.populations or bool(c.populations & r.flags)),
    ("language", _language_fits),
    ("out_of_area", lambda r, c, _: in_area(r, c)),
    ("closed_now", lambda r, c, now: is_open(c.schedule, now) if r.urgency == "emergency"
     else operating(c.schedule, now)),
    ("already_tried", lambda r, c, _: c.service_id not in r.tried),
)


def first_failure(referral: Referral, candidate: Candidate, now: datetime) -> str | None:
    """The code of the first hard constraint ``candidate`` fails, or None if it fits."""
    for code, check in CHECKS:
        if not check(referral, candidate, now):
            return code
    return None
