"""The search table ``service_site_need``: one row per service x site x need category.

Why: a search by need and radius on the normalized tables had to visit every site in the
radius's bounding box (thousands in a dense city) before it could drop the services of
other needs. This table puts the need first in the index key, then a latitude band
(``lat_band``: 0.05 degree, about 5.5 km) and the longitude, so one index range per band
touches only the sites of that need inside the box: ``(category, lat_band, longitude,
latitude, service_id)``.

It is derived data, rebuilt for the affected services in the same transaction as every
write that changes a service's categories, sites or interpretation flag, or a site's
coordinates (handlers, HSDS import), so it can never disagree with the directory after a
commit. Each row carries its service's ``interpretation_available`` (an INCLUDE column of
the box index on PostgreSQL), so the language filter ("speaks it or can interpret") needs
no read of the service row of every candidate in the box. It holds no
addresses, names or confidential flags: the views decide what a caller may see.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from sqlalchemy import ColumnElement, Integer, cast, delete, func, insert, or_, select, union
from sqlalchemy.orm import Session

from .tables import (
    location,
    one_of,
    service,
    service_at_location,
    service_category,
    service_site_need,
)

BANDS_PER_DEGREE = 20  # 0.05 degree latitude bands


def band_expr(dialect: str) -> ColumnElement[int]:
    """SQL for a site's band, equal to ``band_of``: floor() on PostgreSQL (whose CAST
    rounds); on SQLite (which may lack floor()) CAST truncates, and +90 keeps it positive."""
    scaled = (location.c.latitude + 90) * BANDS_PER_DEGREE
    if dialect == "postgresql":
        return cast(func.floor(scaled), Integer)
    return cast(scaled, Integer)


def band_of(latitude: float) -> int:
    return int((latitude + 90) * BANDS_PER_DEGREE)


def bands_between(lat0: float, lat1: float) -> list[int]:
    """Every band a latitude range [lat0, lat1] overlaps."""
    low, high = band_of(max(lat0, -90.0)), band_of(min(lat1, 90.0))
    return list(range(low, high + 1))


def rows_of(service_id: str, categories: Iterable[str], interpretation_available: bool,
            sites: Iterable[tuple[str, float, float]]) -> list[dict[str, Any]]:
    """The rows of one service, from its categories, its interpretation flag and its sites
    (id, latitude, longitude) as stored: what ``refresh`` would select for it, computed
    without a query (bulk imports, which have just written exactly these values)."""
    categories = list(categories)
    return [{"service_id": service_id, "location_id": location_id, "category": category,
             "lat_band": band_of(latitude), "latitude": latitude, "longitude": longitude,
             "interpretation_available": bool(interpretation_available)}
            for location_id, latitude, longitude in sites for category in categories]


def refresh(session: Session, *, service_ids: Collection[str] = (),
            location_ids: Collection[str] = ()) -> None:
    """Rebuild the rows of these services and of every service at these sites from the
    directory tables (call after writing categories, service-at-location links or
    coordinates, inside the same transaction)."""
    sids, lids = list(service_ids), list(location_ids)
    if not sids and not lids:
        return
    t = service_site_need
    session.execute(delete(t).where(or_(one_of(session, t.c.service_id, sids),
                                        one_of(session, t.c.location_id, lids))))
    columns = (service_category.c.service_id, service_at_location.c.location_id,
               service_category.c.category, band_expr(session.get_bind().dialect.name),
               location.c.latitude, location.c.longitude, service.c.interpretation_available)
    joined = (select(*columns)
              .join(service_at_location,
                    service_at_location.c.service_id == service_category.c.service_id)
              .join(location, location.c.id == service_at_location.c.location_id)
              .join(service, service.c.id == service_category.c.service_id))
    # one branch per kind of id, each driven by its own index (an OR across the joined
    # tables made PostgreSQL join the whole tables); UNION drops rows both branches give
    branches = ([joined.where(one_of(session, service_category.c.service_id, sids))]
                if sids else []) + ([joined.where(
                    one_of(session, service_at_location.c.location_id, lids))] if lids else [])
    source = branches[0] if len(branches) == 1 else union(*branches)
    session.execute(insert(t).from_select(
        ["service_id", "location_id", "category", "lat_band", "latitude", "longitude",
         "interpretation_available"], source))


def box(lat: float, lon: float, radius_km: float, km_per_deg_lat: float, kx: float
        ) -> tuple[float, float, float, float]:
    """The bounding box (lat0, lat1, lon0, lon1) of a radius; ``kx`` km per degree of
    longitude at ``lat``."""
    d_lat, d_lon = radius_km / km_per_deg_lat, radius_km / kx
    return lat - d_lat, lat + d_lat, lon - d_lon, lon + d_lon

