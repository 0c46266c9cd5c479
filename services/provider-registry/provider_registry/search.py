"""Directory search: need, place and radius, language, age, accepting, open now, stale.

Index strategy (PostgreSQL and SQLite alike): a need plus a place reads the search table
``service_site_need`` (``search_index.py``): the radius becomes a bounding box, and one
range of ``ix_service_site_need_box`` per 0.05-degree latitude band, ``(category,
lat_band, longitude, latitude)``, touches only that need's sites in the box. A place
without a need uses ``ix_location_lat_lon``. Inside the box the distance is ranked in SQL
with the equirectangular approximation (within 0.1 % of the great-circle distance at city
scale); language through the ``(code, service_id)`` index; only one page of rows comes
back, with the total (``count(*) OVER ()``). The distance shown is the great-circle
(haversine) distance. ``open_now`` depends on each service's own time zone, so it is
checked in Python, on the candidates the indexed query left (id and schedule columns
only), never on the whole table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, exists, func, or_, select
from sqlalchemy.orm import Session

from servicekit import geo

from . import domain, search_index
from .queries import list_filters
from .tables import (
    location,
    service,
    service_at_location,
    service_language,
    service_site_need,
)

KM_PER_DEGREE_LAT = 110.574
KM_PER_DEGREE_LON_EQUATOR = 111.320
TOTAL_CAP = 1000  # a total above this is reported as TOTAL_CAP + 1 ("1000+")


@dataclass(frozen=True)
class SearchQuery:
    need: str | None = None
    lat: float | None = None
    lon: float | None = None
    radius_km: float = 25.0
    language: str | None = None
    age: int | None = None
    accepting: bool | None = None
    open_now: bool | None = None
    stale: bool | None = None
    organization_id: str | None = None
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True)
class Hit:
    service_id: str
    distance_km: float | None = None
    nearest_location_id: str | None = None


def _service_filters(q: SearchQuery, now: datetime, stale_after_days: int
                     ) -> list[ColumnElement[bool]]:
    cond = list_filters(need=q.need, accepting=q.accepting, organization_id=q.organization_id)
    if q.language is not None:
        # correlated EXISTS: one index probe per candidate; an IN (subquery) made PostgreSQL
        # hash every service speaking the language (tens of thousands of rows) per search
        speaks = exists().where(service_language.c.service_id == service.c.id,
                                service_language.c.code == q.language.split("-")[0].lower())
        cond.append(or_(service.c.interpretation_available.is_(True), speaks))
    if q.age is not None:
        cond.append(or_(service.c.minimum_age.is_(None), service.c.minimum_age <= q.age))
        cond.append(or_(service.c.maximum_age.is_(None), service.c.maximum_age >= q.age))
    if q.stale is not None:
        cutoff = now - timedelta(days=stale_after_days)
        old = or_(service.c.last_confirmed.is_(None), service.c.last_confirmed < cutoff)
        cond.append(old if q.stale else ~old)
    return cond


def _nearby(q: SearchQuery) -> Any:
    """Subquery: service id -> squared approximate distance (km^2) of its nearest site
    inside the bounding box of the radius."""
    assert q.lat is not None and q.lon is not None
    kx = KM_PER_DEGREE_LON_EQUATOR * max(math.cos(math.radians(q.lat)), 0.01)
    d_lat, d_lon = q.radius_km / KM_PER_DEGREE_LAT, q.radius_km / kx
    dy = (location.c.latitude - q.lat) * KM_PER_DEGREE_LAT
    dx = (location.c.longitude - q.lon) * kx
    d2 = dy * dy + dx * dx
    return (select(service_at_location.c.service_id.label("sid"), func.min(d2).label("d2"))
            .join(location, location.c.id == service_at_location.c.location_id)
            .where(location.c.latitude.between(q.lat - d_lat, q.lat + d_lat),
                   location.c.longitude.between(q.lon - d_lon, q.lon + d_lon),
                   d2 <= q.radius_km * q.radius_km)
            .group_by(service_at_location.c.service_id).subquery("near"))


def _schedule(row: Any) -> domain.Schedule:
    return domain.Schedule(
        always_open=row.always_open, timezone=row.timezone,
        hours=tuple(domain.OpeningHours(**h) for h in row.opening_hours),
        valid_from=_as_date(row.schedule_valid_from), valid_to=_as_date(row.schedule_valid_to))


def _as_date(value: Any) -> date | None:
    return date.fromisoformat(value) if isinstance(value, str) else value


def _nearby_by_need(q: SearchQuery) -> Any:
    """Like ``_nearby`` for one need, on the search table: one index range per latitude
    band of ``ix_service_site_need_box`` touches only that need's sites in the box."""
    assert q.lat is not None and q.lon is not None and q.need is not None
    kx = KM_PER_DEGREE_LON_EQUATOR * max(math.cos(math.radians(q.lat)), 0.01)
    lat0, lat1, lon0, lon1 = search_index.box(q.lat, q.lon, q.radius_km, KM_PER_DEGREE_LAT, kx)
    n = service_site_need
    dy = (n.c.latitude - q.lat) * KM_PER_DEGREE_LAT
    dx = (n.c.longitude - q.lon) * kx
    d2 = dy * dy + dx * dx
    return (select(n.c.service_id.label("sid"), func.min(d2).label("d2"))
            .where(n.c.category == q.need,
                   n.c.lat_band.in_(search_index.bands_between(lat0, lat1)),
                   n.c.longitude.between(lon0, lon1), n.c.latitude.between(lat0, lat1),
                   d2 <= q.radius_km * q.radius_km)
            .group_by(n.c.service_id).subquery("near"))


def search(session: Session, q: SearchQuery, *, now: datetime, stale_after_days: int
           ) -> tuple[list[Hit], int]:
    """One page of matching services (nearest first when a place is given, else by name)
    and the total that match: exact with a place (the radius bounds the candidates and
    the total comes with the page, ``count(*) OVER ()``), else counted up to
    ``TOTAL_CAP + 1`` (``total == TOTAL_CAP + 1`` means "more than TOTAL_CAP")."""
    by_need = q.lat is not None and q.need is not None
    cond = _service_filters(replace(q, need=None) if by_need else q, now, stale_after_days)
    base = select(service.c.id)
    order: list[Any] = [service.c.name, service.c.id]
    if q.lat is not None:
        near = _nearby_by_need(q) if by_need else _nearby(q)
        base = select(service.c.id).join(near, near.c.sid == service.c.id)
        order = [near.c.d2, service.c.id]
    if q.open_now:
        sched = base.add_columns(service.c.always_open, service.c.timezone,
                                 service.c.opening_hours, service.c.schedule_valid_from,
                                 service.c.schedule_valid_to)
        rows = session.execute(sched.where(*cond).order_by(*order)).all()
        ids = [r.id for r in rows if domain.is_open(_schedule(r), now)]
        total, page = len(ids), ids[q.offset:q.offset + q.limit]
    elif q.lat is not None:
        rows = session.execute(base.add_columns(func.count().over().label("total"))
                               .where(*cond).order_by(*order)
                               .limit(q.limit).offset(q.offset)).all()
        page = [r.id for r in rows]
        total = rows[0].total if rows else _capped_count(session, base.where(*cond), None)
    else:
        total = _capped_count(session, base.where(*cond))
        page = list(session.execute(base.where(*cond).order_by(*order)
                                    .limit(q.limit).offset(q.offset)).scalars())
    return _with_distances(session, q, page), int(total)


def _capped_count(session: Session, query: Any, cap: int | None = TOTAL_CAP) -> int:
    """How many rows ``query`` has, counting no further than ``cap + 1`` (None: exact)."""
    limited = query if cap is None else query.limit(cap + 1)
    return int(session.execute(select(func.count()).select_from(limited.subquery()))
               .scalar_one())


def _with_distances(session: Session, q: SearchQuery, ids: list[str]) -> list[Hit]:
    """Great-circle distance to each service's nearest site (one query for the page)."""
    if q.lat is None or q.lon is None or not ids:
        return [Hit(i) for i in ids]
    best: dict[str, tuple[float, str]] = {}
    rows = session.execute(
        select(service_at_location.c.service_id, location.c.id, location.c.latitude,
               location.c.longitude)
        .join(location, location.c.id == service_at_location.c.location_id)
        .where(service_at_location.c.service_id.in_(ids)))
    for sid, loc_id, lat, lon in rows:
        km = geo.haversine_km(q.lat, q.lon, lat, lon)
        if sid not in best or km < best[sid][0]:
            best[sid] = (km, loc_id)
    return [Hit(i, *best[i]) if i in best else Hit(i) for i in ids]
