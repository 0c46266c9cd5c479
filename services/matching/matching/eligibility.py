"""Hard constraints of matching (DESIGN.md §7), checked in order; the first failure names
the elimination code. Pure, like ``domain`` (whose types it reads but never builds)."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from servicekit.geo import EARTH_RADIUS_KM

if TYPE_CHECKING:  # domain imports this module: no import cycle at runtime
    from .domain import Candidate, Referral, Schedule

WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
MAX_AGE = 130


@lru_cache(maxsize=4096)
def primary_language(tag: str) -> str:
    return tag.split("-", 1)[0].lower()


_PRIMARY: dict[frozenset[str], frozenset[str]] = {}  # language sets are few and shared


def _primaries(languages: frozenset[str]) -> frozenset[str]:
    found = _PRIMARY.get(languages)
    if found is None:
        if len(_PRIMARY) >= 10_000:
            _PRIMARY.clear()
        found = _PRIMARY[languages] = frozenset(primary_language(t) for t in languages)
    return found


def speaks(candidate: Candidate, tag: str) -> bool:
    return primary_language(tag) in _primaries(candidate.languages)


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float,
                 _radians: Callable[[float], float] = math.radians,
                 _sin: Callable[[float], float] = math.sin,
                 _cos: Callable[[float], float] = math.cos) -> float:
    """``servicekit.geo.haversine_km`` with the same arithmetic (so the same results), its
    functions bound locally: it runs for every candidate of every decision."""
    phi1, phi2 = _radians(lat1), _radians(lat2)
    d_phi = phi2 - phi1
    d_lambda = _radians(lon2 - lon1)
    a = _sin(d_phi / 2) ** 2 + _cos(phi1) * _cos(phi2) * _sin(d_lambda / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


NEAREST_HINT = "_nearest_km_from"  # (lat, lon, km) a caller already computed for this point


def nearest_km(candidate: Candidate, referral: Referral) -> float | None:
    """Distance from the referral's point to the nearest location (None: no location).
    A candidate may carry the value for one point (``NEAREST_HINT``, set by the in-memory
    index, which computed it with this same arithmetic while checking the area)."""
    hint = candidate.__dict__.get(NEAREST_HINT)
    if hint is not None and hint[0] == referral.lat and hint[1] == referral.lon:
        return hint[2]  # type: ignore[no-any-return]
    locations = candidate.locations
    if not locations:
        return None
    if len(locations) == 1:
        return haversine_km(referral.lat, referral.lon, locations[0].lat, locations[0].lon)
    return min(haversine_km(referral.lat, referral.lon, p.lat, p.lon) for p in locations)


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


@lru_cache(maxsize=4096)
def _minutes(hhmm: str) -> int:
    hours, _, minutes = hhmm.partition(":")
    return int(hours) * 60 + int(minutes)


@lru_cache(maxsize=256)
def _local_time(timezone: str, now: datetime) -> datetime | None:
    """``now`` in ``timezone`` (None: unknown zone); a decision asks this of every
    candidate at the same ``now``, mostly in a handful of zones."""
    try:
        return now.astimezone(ZoneInfo(timezone))
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _local(schedule: Schedule, now: datetime) -> datetime | None:
    return _local_time(schedule.timezone, now)


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
    """The code of the first hard constraint ``candidate`` fails, or None if it fits:
    ``CHECKS`` in order, written out (it runs for every candidate of every decision, and a
    call per check was half its cost; a test holds it to ``CHECKS``)."""
    r, c = referral, candidate
    if r.need not in c.categories:
        return "category"
    if c.status != "active":
        return "inactive"
    if not c.accepting:
        return "not_accepting"
    if not c.open_offers + c.active_cases < c.capacity_max:
        return "at_capacity"
    if not _age_fits(r, c, now):
        return "age"
    if c.genders and r.gender is not None and not _gender_fits(r, c, now):
        return "gender"
    if c.populations and not c.populations & r.flags:
        return "population"
    if r.needs_interpreter and r.preferred_language and not _language_fits(r, c, now):
        return "language"
    if not in_area(r, c):
        return "out_of_area"
    if not (is_open(c.schedule, now) if r.urgency == "emergency"
            else operating(c.schedule, now)):
        return "closed_now"
    if c.service_id in r.tried:
        return "already_tried"
    return None


UNKNOWN: object = object()  # a distance ``sift`` did not compute (None: "no location")


def sift(referral: Referral, candidates: Iterable[Candidate], now: datetime
         ) -> tuple[list[tuple[Candidate, object]], list[tuple[str, str]]]:
    """``first_failure`` of every candidate, for one referral at one time (what
    ``domain.evaluate`` asks): the fitting candidates, each with the distance the area check
    computed (``UNKNOWN`` when it needed none), and (service_id, code) of the others, both in
    input order. The same checks in the same order (a test holds it to ``first_failure``),
    with what depends on the referral alone worked out once, and each schedule object
    judged once per call."""
    r = referral
    need, flags, tried = r.need, r.flags, r.tried
    gender = None if r.gender is None else r.gender.lower()
    language = r.preferred_language if r.needs_interpreter and r.preferred_language else None
    primary = None if language is None else primary_language(language)
    emergency = r.urgency == "emergency"
    span: object = UNKNOWN  # worked out when first needed
    lat, lon = r.lat, r.lon
    schedules: dict[int, tuple[bool, Schedule]] = {}  # the schedule kept: its id stays its own
    fitting: list[tuple[Candidate, object]] = []
    failed: list[tuple[str, str]] = []
    for c in candidates:
        if need not in c.categories:
            failed.append((c.service_id, "category"))
            continue
        if c.status != "active":
            failed.append((c.service_id, "inactive"))
            continue
        if not c.accepting:
            failed.append((c.service_id, "not_accepting"))
            continue
        if not c.open_offers + c.active_cases < c.capacity_max:
            failed.append((c.service_id, "at_capacity"))
            continue
        if span is UNKNOWN:
            span = _age_range(r)
        if span is not None and not (
                (c.age_min is None or span[0] >= c.age_min)  # type: ignore[index]
                and (c.age_max is None or span[1] <= c.age_max)):  # type: ignore[index]
            failed.append((c.service_id, "age"))
            continue
        if c.genders and gender is not None and gender not in {g.lower() for g in c.genders}:
            failed.append((c.service_id, "gender"))
            continue
        if c.populations and not c.populations & flags:
            failed.append((c.service_id, "population"))
            continue
        if (primary is not None and not c.interpretation_available
                and primary not in _primaries(c.languages)):
            failed.append((c.service_id, "language"))
            continue
        # in_area, keeping the distance it computes (nearest_km, the in-memory index's hint
        # read here as nearest_km reads it)
        distance: object = UNKNOWN
        radius, areas = c.radius_km, c.area_geohashes
        if (radius is not None or areas) and not (
                areas and any(r.geohash.startswith(g) or g.startswith(r.geohash)
                              for g in areas)):
            hint = c.__dict__.get(NEAREST_HINT)
            if hint is not None and hint[0] == lat and hint[1] == lon:
                distance = hint[2]
            else:
                distance = nearest_km(c, r)
            if not (radius is not None and distance is not None
                    and distance <= radius):  # type: ignore[operator]
                failed.append((c.service_id, "out_of_area"))
                continue
        schedule = c.schedule
        judged = schedules.get(id(schedule))
        if judged is None:
            judged = schedules[id(schedule)] = (
                is_open(schedule, now) if emergency else operating(schedule, now), schedule)
        if not judged[0]:
            failed.append((c.service_id, "closed_now"))
            continue
        if c.service_id in tried:
            failed.append((c.service_id, "already_tried"))
            continue
        fitting.append((c, distance))
    return fitting, failed


def first_failure_by_table(referral: Referral, candidate: Candidate, now: datetime
                           ) -> str | None:
    """``first_failure`` read straight off ``CHECKS`` (the specification it is held to)."""
    for code, check in CHECKS:
        if not check(referral, candidate, now):
            return code
    return None
