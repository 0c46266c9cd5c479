"""An HSDS 3.0 ``service_full`` document -> the registry's rows (pure: no I/O, no clock).

What the model holds from HSDS: organization (id, name, alternate_name, description, email,
website), service (id, name, alternate_name, description, url, email, status, ages,
assured_date as the confirmation time, interpretation as a flag), its phones, schedules
(weekly opening hours, UTC offset, valid_from/valid_to), languages (codes), service areas
(our radius/geohash extents), attributes with their taxonomy terms (the need categories are
derived from them), each location (name, type, description, coordinates, addresses,
phones, the confidential marker), and the contacts of the organization, the service, its
services at locations and its locations (name, title, department, email, phones). Everything else in a record is accepted and not kept.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from .. import domain

WEEK = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)(:[0-5]\d(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$")
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
_RADIUS = re.compile(r"^radius_km=(\d+(\.\d+)?)$")
_GEOHASHES = re.compile(r"^geohashes=([0-9b-hjkmnp-z]{1,12}(,[0-9b-hjkmnp-z]{1,12})*)$")


class RecordError(Exception):
    """The record cannot be imported; ``reasons`` say why (field paths, no values)."""

    def __init__(self, reasons: list[str]):
        super().__init__("; ".join(reasons))
        self.reasons = reasons


@dataclass
class Bundle:
    """Everything one imported service writes, ready for the tables."""

    service_id: str
    organization_id: str
    organization: dict[str, Any] | None  # None: the organization must already exist
    service: domain.Service
    service_row: dict[str, Any]
    locations: list[dict[str, Any]]
    site_ids: list[str]
    sal_ids: dict[str, str]  # location id -> service_at_location id
    attributes: list[dict[str, Any]]
    terms: list[dict[str, Any]]
    phones: list[dict[str, Any]]
    # contact rows (their phones under "phones"), the most specific owner first
    contacts: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    digest: str = ""


# ``json.dumps(doc, sort_keys=True, default=str)`` exactly (stored digests stay valid),
# without rebuilding the encoder per call or its circular-reference bookkeeping (a
# document read from JSON or CSV is a tree)
_DIGEST_JSON = json.JSONEncoder(sort_keys=True, default=str, check_circular=False)


def digest(doc: Any) -> str:
    return hashlib.sha256(_DIGEST_JSON.encode(doc).encode()).hexdigest()


def _hhmm(value: str | None, path: str, errors: list[str]) -> str | None:
    if value is None or value == "":
        return None
    m = _TIME.match(str(value))
    if not m:
        errors.append(f"{path}: not a time of day (HH:MM)")
        return None
    hhmm = f"{m.group(1)}:{m.group(2)}"
    return "24:00" if hhmm == "23:59" else hhmm


def time_zone(offsets: set[Any], errors: list[str]) -> str:
    """HSDS 3.0 gives a UTC offset in hours; a whole-hour offset is a fixed IANA zone."""
    if not offsets:
        return "UTC"
    if len(offsets) > 1:
        errors.append("schedules.timezone: all schedules of a service need the same offset")
        return "UTC"
    hours = float(offsets.pop())
    if not hours.is_integer() or not -12 <= hours <= 14:
        errors.append("schedules.timezone: only whole-hour UTC offsets are supported")
        return "UTC"
    # POSIX sign convention: Etc/GMT-3 is UTC+3
    return "UTC" if hours == 0 else f"Etc/GMT{'-' if hours > 0 else '+'}{int(abs(hours))}"


def schedule_of(rows: list[dict[str, Any]], errors: list[str]) -> domain.Schedule:
    """Weekly opening hours; overnight hours are split at midnight; a week of 00:00-24:00
    is ``always_open``. Services without schedules are never "open now"."""
    hours: list[domain.OpeningHours] = []
    for i, row in enumerate(rows):
        path = f"schedules.{i}"
        if row.get("freq") not in (None, "", "WEEKLY"):
            errors.append(f"{path}.freq: only WEEKLY schedules are supported")
            continue
        days = [d.strip() for d in str(row.get("byday") or ",".join(WEEK)).split(",")]
        if any(d not in WEEK for d in days):
            errors.append(f"{path}.byday: not a list of MO..SU")
            continue
        if not row.get("opens_at") or not row.get("closes_at"):
            errors.append(f"{path}: opens_at and closes_at are required")
            continue
        opens = _hhmm(row["opens_at"], f"{path}.opens_at", errors)
        closes = _hhmm(row["closes_at"], f"{path}.closes_at", errors)
        if opens is None or closes is None:
            continue
        for day in days:
            if opens < closes:
                hours.append(domain.OpeningHours(day, opens, closes))
            else:  # overnight: split at midnight
                hours.append(domain.OpeningHours(day, opens, "24:00"))
                if closes != "00:00":
                    hours.append(domain.OpeningHours(WEEK[(WEEK.index(day) + 1) % 7],
                                                     "00:00", closes))
    zone = time_zone({r["timezone"] for r in rows if r.get("timezone") not in (None, "")},
                     errors)
    valid_from = min((_date(r["valid_from"]) for r in rows if r.get("valid_from")), default=None)
    valid_to = max((_date(r["valid_to"]) for r in rows if r.get("valid_to")), default=None)
    unique = sorted(set(hours), key=lambda h: (WEEK.index(h.byday), h.opens_at))
    if {(h.byday, h.opens_at, h.closes_at) for h in unique} == {(d, "00:00", "24:00")
                                                                for d in WEEK}:
        return domain.Schedule(True, zone, (), valid_from, valid_to)
    return domain.Schedule(False, zone, tuple(unique), valid_from, valid_to)


def _date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def area_of(rows: list[dict[str, Any]], site_count: int, default_radius_km: float,
            warnings: list[str]) -> domain.ServiceArea:
    for row in rows:
        extent = str(row.get("extent") or "").strip()
        if m := _RADIUS.match(extent):
            return domain.ServiceArea(radius_km=float(m.group(1)))
        if m := _GEOHASHES.match(extent):
            return domain.ServiceArea(radius_km=None, geohashes=tuple(m.group(1).split(",")))
    if rows:
        warnings.append(f"service_areas: no radius_km=/geohashes= extent; using "
                        f"{default_radius_km:g} km around the locations")
    if site_count == 0:
        raise RecordError(["service_areas: no usable area and no location with coordinates"])
    return domain.ServiceArea(radius_km=default_radius_km)


def _age(value: Any, path: str, errors: list[str]) -> int | None:
    if value is None:
        return None
    if not float(value).is_integer() or not 0 <= value <= domain.MAX_AGE:
        errors.append(f"{path}: must be a whole number of years between 0 and "
                      f"{domain.MAX_AGE}")
        return None
    return int(value)


def _languages(rows: list[dict[str, Any]], warnings: list[str]) -> list[str]:
    codes = []
    for i, row in enumerate(rows):
        code = str(row.get("code") or "").strip()
        if _LANGUAGE.match(code):
            codes.append(code)
        else:
            warnings.append(f"languages.{i}.code: missing or not a language tag; skipped")
    return list(dict.fromkeys(codes))


def _phones(rows: list[dict[str, Any]], **owner: str | None) -> list[dict[str, Any]]:
    return [{"id": p["id"], "number": str(p["number"]),
             "extension": None if p.get("extension") is None else str(p["extension"]),
             "type": p.get("type"), "description": p.get("description"),
             "organization_id": None, "service_id": None, "location_id": None,
             "contact_id": None, **owner}
            for p in rows]
