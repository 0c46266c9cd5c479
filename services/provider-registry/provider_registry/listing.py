"""Search result pages as the API answers them: one statement per page, rows straight to
the JSON the API sends.

Why not ``queries.service_views`` plus marshmallow: for a 20-service page that path cost
five more queries (service, categories, sites, capacity, organizations), a domain object
per row, and a marshmallow dump of ~1,000 nested fields: most of a search request's CPU.
Here the page's related rows come with the page itself: the search select becomes a
subquery, joined to service, organization and capacity, with the categories and sites of
each service aggregated as JSON in the database (``json_agg`` on PostgreSQL,
``json_group_array`` on SQLite). ``item`` turns one such row into exactly what
``ServiceOut().dump(queries._view(...))`` gives (same keys, order and JSON types; a test
compares the two), so the search answer needs no schema dump.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import JSON, func, select

from servicekit import geo
from servicekit.events import format_time

from . import domain, geohash
from .tables import (
    as_utc,
    location,
    organization,
    service,
    service_at_location,
    service_capacity,
    service_category,
)

SERVICE_COLUMNS = (
    "organization_id", "name", "status", "minimum_age", "maximum_age",
    "interpretation_available", "service_area_radius_km", "always_open", "timezone",
    "schedule_valid_from", "schedule_valid_to", "last_modified", "last_confirmed",
    "description")
# JSON values of a row, fetched as one JSON array (one decode per row instead of eight)
JSON_PARTS = ("genders", "populations", "languages", "geohashes", "hours", "channels",
              "categories", "sites")


def assembled(dialect: str, page: Any, order: list[Any] | None = None) -> Any:
    """Select of every row of ``page`` (a subquery with an ``id`` column, plus whatever
    else it carries, e.g. ``d2`` and ``total``) with what its view needs, in ``order``
    (columns of ``page``): the service, organization and capacity columns, and one JSON
    array ``doc`` of the JSON columns, the categories and the sites (``JSON_PARTS``)."""
    pg = dialect == "postgresql"
    agg = func.json_agg if pg else func.json_group_array
    array = func.json_build_array if pg else func.json_array
    # SQLite keeps JSON as text: json() makes json_array embed it instead of quoting it
    embed = (lambda value: value) if pg else func.json
    sites = (select(agg(array(location.c.id, location.c.latitude, location.c.longitude,
                               location.c.name, location.c.confidential)))
             .select_from(service_at_location.join(
                 location, location.c.id == service_at_location.c.location_id))
             .where(service_at_location.c.service_id == page.c.id).scalar_subquery())
    categories = (select(agg(service_category.c.category))
                  .where(service_category.c.service_id == page.c.id).scalar_subquery())
    doc = array(*(embed(v) for v in (
        service.c.genders, service.c.populations, service.c.languages,
        service.c.service_area_geohashes, service.c.opening_hours,
        organization.c.notification_channels, categories, sites)), type_=JSON)
    return (select(page, *(service.c[name].label(f"s_{name}") for name in SERVICE_COLUMNS),
                   organization.c.name.label("o_name"),
                   service_capacity.c.maximum.label("c_maximum"),
                   service_capacity.c.accepting.label("c_accepting"),
                   service_capacity.c.available.label("c_available"), doc.label("doc"))
            .select_from(page.join(service, service.c.id == page.c.id)
                         .join(organization, organization.c.id == service.c.organization_id)
                         .outerjoin(service_capacity,
                                    service_capacity.c.service_id == page.c.id))
            .order_by(*(order or [])))


@lru_cache(maxsize=1 << 16)
def _geohash(lat: float, lon: float) -> str:
    """Sites seldom move: most of a page's geohashes were computed for an earlier page."""
    return geohash.encode(lat, lon, domain.LOCATION_GEOHASH_PRECISION)


def _schedule(row: Any, hours: list[dict[str, str]]) -> dict[str, Any]:
    valid_from, valid_to = row.s_schedule_valid_from, row.s_schedule_valid_to
    return {"always_open": bool(row.s_always_open), "timezone": row.s_timezone,
            "hours": [{"byday": h["byday"], "opens_at": h["opens_at"],
                       "closes_at": h["closes_at"]} for h in hours],
            "valid_from": valid_from.isoformat() if valid_from else None,
            "valid_to": valid_to.isoformat() if valid_to else None}


def item(row: Any, *, reveal: bool, now: datetime, stale_after_days: int,
         origin: tuple[float, float] | None = None) -> dict[str, Any]:
    """The API view of one ``assembled`` row, as ``ServiceOut`` dumps it: the routing
    snapshot, site names, description, ``stale``, and with an ``origin`` the great-circle
    ``distance_km`` to the nearest site (a hidden confidential site's distance rounded up to
    whole km, so it cannot be triangulated). Confidential sites keep only id and flag
    unless ``reveal``."""
    genders, populations, languages, geohashes, hours, channels, categories, sites = row.doc
    locations, nearest = [], None
    for loc_id, lat, lon, name, confidential in sorted(sites or (), key=lambda s: s[0]):
        lat, lon, hidden = float(lat), float(lon), bool(confidential) and not reveal
        if origin is not None:
            km = geo.haversine_km(origin[0], origin[1], lat, lon)
            if nearest is None or km < nearest[0]:
                nearest = (km, hidden)
        if hidden:
            locations.append({"location_id": loc_id, "confidential": True})
        else:
            locations.append({"location_id": loc_id, "lat": lat, "lon": lon,
                              "geohash": _geohash(lat, lon),
                              "confidential": bool(confidential), "name": name})
    radius = row.s_service_area_radius_km
    confirmed = row.s_last_confirmed and as_utc(row.s_last_confirmed)
    capacity = ({"maximum": row.c_maximum, "accepting": bool(row.c_accepting),
                 "available": row.c_available} if row.c_maximum is not None else
                {"maximum": domain.NO_CAPACITY.maximum,
                 "accepting": domain.NO_CAPACITY.accepting, "available": None})
    view = {
        "service_id": row.id, "organization_id": row.s_organization_id,
        "organization_name": row.o_name, "service_name": row.s_name,
        "status": row.s_status, "categories": sorted(set(categories or ())),
        "locations": locations,
        "service_area": {"radius_km": None if radius is None else float(radius),
                         "geohashes": list(geohashes)},
        "age_min": row.s_minimum_age, "age_max": row.s_maximum_age,
        "genders": list(genders), "populations": list(populations),
        "languages": list(languages),
        "interpretation_available": bool(row.s_interpretation_available),
        "schedule": _schedule(row, hours), "capacity": capacity,
        "notification_channels": list(channels),
        "updated_at": format_time(as_utc(row.s_last_modified)),
        "last_confirmed_at": confirmed and format_time(confirmed),
        "description": row.s_description,
        "stale": domain.is_stale(confirmed, now, stale_after_days),
    }
    if nearest is not None:
        km, hidden = nearest
        view["distance_km"] = float(math.ceil(km)) if hidden else round(km, 2)
    return view


def items(rows: list[Any], *, may_reveal: Callable[[str], bool], now: datetime,
          stale_after_days: int, origin: tuple[float, float] | None = None
          ) -> list[dict[str, Any]]:
    return [item(r, reveal=bool(may_reveal(r.s_organization_id)), now=now,
                 stale_after_days=stale_after_days, origin=origin) for r in rows]
