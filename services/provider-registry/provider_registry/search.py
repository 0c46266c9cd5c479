"""Directory search: need, place and radius, language, age, accepting, open now, stale.

Index strategy (PostgreSQL and SQLite alike): a need plus a place reads the search table
``service_site_need`` (``search_index.py``): the radius becomes a bounding box, and one
range of ``ix_service_site_need_box`` per 0.05-degree latitude band, ``(category,
lat_band, longitude, latitude)``, touches only that need's sites in the box. A place
without a need uses ``ix_location_lat_lon``. Inside the box the distance is ranked in SQL
with the equirectangular approximation (within 0.1 % of the great-circle distance at city
scale); language through the ``(code, service_id)`` index; only one page of rows comes
back, with the total (``count(*) OVER ()``), and in the same statement what the page's
views need (``listing.py``). The distance shown is the great-circle (haversine) distance
to the nearest site. ``open_now`` depends on each service's own time zone, so it is
checked in Python, on the candidates the indexed query left (id and schedule columns
only), never on the whole table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    DateTime,
    Float,
    Integer,
    String,
    any_,
    bindparam,
    func,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from . import domain, listing, search_index
from .tables import (
    location,
    service,
    service_at_location,
    service_capacity,
    service_category,
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
class _Shape:
    """What decides the SQL of a search; every value is a bound parameter (``_params``),
    so each shape is built once (``_statements``) and compiled once by SQLAlchemy's cache,
    and PostgreSQL sees the same statement text (psycopg prepares it)."""

    dialect: str
    place: bool
    need: bool
    language: bool
    age: bool
    accepting: bool | None
    stale: bool | None
    organization: bool


def _shape(q: SearchQuery, dialect: str) -> _Shape:
    return _Shape(dialect=dialect, place=q.lat is not None, need=q.need is not None,
                  language=q.language is not None, age=q.age is not None,
                  accepting=q.accepting, stale=q.stale,
                  organization=q.organization_id is not None)


def _params(q: SearchQuery, now: datetime, stale_after_days: int) -> dict[str, Any]:
    params: dict[str, Any] = {"need": q.need, "organization_id": q.organization_id,
                              "age": q.age, "limit": q.limit, "offset": q.offset,
                              "cutoff": now - timedelta(days=stale_after_days)}
    if q.language is not None:
        params["language"] = q.language.split("-")[0].lower()
    if q.lat is not None and q.lon is not None:
        kx = KM_PER_DEGREE_LON_EQUATOR * max(math.cos(math.radians(q.lat)), 0.01)
        lat0, lat1, lon0, lon1 = search_index.box(q.lat, q.lon, q.radius_km,
                                                  KM_PER_DEGREE_LAT, kx)
        params.update(lat=q.lat, lon=q.lon, kx=kx, lat0=lat0, lat1=lat1, lon0=lon0,
                      lon1=lon1, r2=q.radius_km * q.radius_km,
                      bands=search_index.bands_between(lat0, lat1))
    return params


def _any(dialect: str, column: Any, name: str, item: Any) -> ColumnElement[bool]:
    """``column IN (:name...)``: one array parameter on PostgreSQL (one statement text
    whatever the number of values), an expanding IN elsewhere."""
    if dialect == "postgresql":
        return column == any_(bindparam(name, type_=ARRAY(item)))  # type: ignore[no-any-return]
    return column.in_(bindparam(name, expanding=True))  # type: ignore[no-any-return]


def _filters(shape: _Shape, sid: Any, interp: Any) -> list[ColumnElement[bool]]:
    """The filters of ``shape`` on candidates whose service id is ``sid`` and whose
    interpretation flag is ``interp`` (the service's columns, or the search table's)."""
    cond: list[ColumnElement[bool]] = []
    if shape.need and not shape.place:  # with a place the search table filters the need
        cond.append(sid.in_(select(service_category.c.service_id)
                            .where(service_category.c.category == bindparam("need"))))
    if shape.accepting is not None:
        open_ids = select(service_capacity.c.service_id).where(
            service_capacity.c.accepting.is_(True))
        # a service without a capacity row is not accepting
        cond.append(sid.in_(open_ids) if shape.accepting else sid.not_in(open_ids))
    if shape.organization:
        cond.append(service.c.organization_id == bindparam("organization_id"))
    if shape.language:
        # correlated EXISTS: one index probe per candidate; an IN (subquery) made PostgreSQL
        # hash every service speaking the language (tens of thousands of rows) per search,
        # and so could an EXISTS it turns into one (OFFSET keeps it a per-candidate probe)
        speaks = (select(service_language.c.service_id)
                  .where(service_language.c.service_id == sid,
                         service_language.c.code == bindparam("language"))
                  .offset(bindparam("no_offset", 0, literal_execute=False)).exists())
        cond.append(or_(interp.is_(True), speaks))
    if shape.age:
        age = bindparam("age", type_=Integer)
        cond.append(or_(service.c.minimum_age.is_(None), service.c.minimum_age <= age))
        cond.append(or_(service.c.maximum_age.is_(None), service.c.maximum_age >= age))
    if shape.stale is not None:
        cutoff = bindparam("cutoff", type_=DateTime(timezone=True))
        old = or_(service.c.last_confirmed.is_(None), service.c.last_confirmed < cutoff)
        cond.append(old if shape.stale else ~old)
    return cond


def _d2(latitude: Any, longitude: Any) -> Any:
    """Squared equirectangular distance (km^2) from the query point."""
    dy = (latitude - bindparam("lat", type_=Float)) * KM_PER_DEGREE_LAT
    dx = (longitude - bindparam("lon", type_=Float)) * bindparam("kx", type_=Float)
    return dy * dy + dx * dx


def _box(latitude: Any, longitude: Any) -> list[ColumnElement[bool]]:
    return [latitude.between(bindparam("lat0", type_=Float), bindparam("lat1", type_=Float)),
            longitude.between(bindparam("lon0", type_=Float), bindparam("lon1", type_=Float))]


def _nearby() -> Any:
    """Subquery: service id -> squared approximate distance (km^2) of its nearest site
    inside the bounding box of the radius."""
    d2 = _d2(location.c.latitude, location.c.longitude)
    return (select(service_at_location.c.service_id.label("sid"), func.min(d2).label("d2"))
            .join(location, location.c.id == service_at_location.c.location_id)
            .where(*_box(location.c.latitude, location.c.longitude),
                   d2 <= bindparam("r2", type_=Float))
            .group_by(service_at_location.c.service_id).subquery("near"))


def _schedule(row: Any) -> domain.Schedule:
    return domain.Schedule(
        always_open=row.always_open, timezone=row.timezone,
        hours=tuple(domain.OpeningHours(**h) for h in row.opening_hours),
        valid_from=_as_date(row.schedule_valid_from), valid_to=_as_date(row.schedule_valid_to))


def _as_date(value: Any) -> date | None:
    return date.fromisoformat(value) if isinstance(value, str) else value


def _nearby_by_need(dialect: str) -> Any:
    """Like ``_nearby`` for one need, on the search table: one index range per latitude
    band of ``ix_service_site_need_box`` touches only that need's sites in the box; with
    each candidate's interpretation flag (``interp``), from the same index."""
    n = service_site_need
    d2 = _d2(n.c.latitude, n.c.longitude)
    flag = n.c.interpretation_available
    interp = (func.bool_or(flag, type_=Boolean) if dialect == "postgresql"
              else func.max(flag, type_=Boolean))  # the same on every row of a service
    return (select(n.c.service_id.label("sid"), func.min(d2).label("d2"),
                   interp.label("interp"))
            .where(n.c.category == bindparam("need"),
                   _any(dialect, n.c.lat_band, "bands", Integer),
                   *_box(n.c.latitude, n.c.longitude)[::-1],
                   d2 <= bindparam("r2", type_=Float))
            .group_by(n.c.service_id).subquery("near"))


@dataclass(frozen=True)
class _Statements:
    page: Any  # one page of the candidates, with everything the views need (listing.assembled)
    count: Any  # how many candidates, up to TOTAL_CAP + 1 (exactly, with a place)
    schedules: Any  # every candidate's schedule columns, in order (open_now)
    by_ids: Any  # the rows of the page ids in :ids (open_now)


@lru_cache(maxsize=1024)  # at most 576 shapes per dialect
def _statements(shape: _Shape) -> _Statements:
    joined_cond = _filters(shape, service.c.id, service.c.interpretation_available)
    if shape.place:
        near = _nearby_by_need(shape.dialect) if shape.need else _nearby()
        joined = (select(service.c.id, near.c.d2).join(near, near.c.sid == service.c.id)
                  .where(*joined_cond))
        if shape.need and not (shape.organization or shape.age or shape.stale is not None):
            # every filter reads the search table (or an index by service id): the
            # candidates never touch the service table; the page's rows join it
            base = (select(near.c.sid.label("id"), near.c.d2)
                    .where(*_filters(shape, near.c.sid, near.c.interp)))
            order = [near.c.d2, near.c.sid]
        else:
            base, order = joined, [near.c.d2, service.c.id]
        page = (base.add_columns(func.count().over().label("total")).order_by(*order)
                .limit(bindparam("limit")).offset(bindparam("offset")).subquery("page"))
        rows = listing.assembled(shape.dialect, page, [page.c.d2, page.c.id])
        count = select(func.count()).select_from(base.subquery())
        schedules_of, schedule_order = joined, [near.c.d2, service.c.id]
    else:
        base = select(service.c.id).where(*joined_cond)
        order = [service.c.name, service.c.id]
        page = (select(service.c.id, service.c.name.label("sort_name")).where(*joined_cond)
                .order_by(*order).limit(bindparam("limit")).offset(bindparam("offset"))
                .subquery("page"))
        rows = listing.assembled(shape.dialect, page, [page.c.sort_name, page.c.id])
        count = select(func.count()).select_from(base.limit(TOTAL_CAP + 1).subquery())
        schedules_of, schedule_order = base, order
    schedules = schedules_of.add_columns(
        service.c.always_open, service.c.timezone, service.c.opening_hours,
        service.c.schedule_valid_from, service.c.schedule_valid_to).order_by(*schedule_order)
    ids = select(service.c.id).where(_any(shape.dialect, service.c.id, "ids", String))
    by_ids = listing.assembled(shape.dialect, ids.subquery("page"))
    return _Statements(rows, count, schedules, by_ids)


def search_page(session: Session, q: SearchQuery, *, now: datetime, stale_after_days: int
                ) -> tuple[list[Any], int]:
    """One page of matching services (nearest first when a place is given, else by name)
    and the total that match: exact with a place (the radius bounds the candidates and
    the total comes with the page, ``count(*) OVER ()``), else counted up to
    ``TOTAL_CAP + 1`` (``total == TOTAL_CAP + 1`` means "more than TOTAL_CAP").

    Each row carries everything its view needs (``listing.assembled``; ``listing.item``
    makes the view): one statement for a place, two without one (the capped count), two
    with ``open_now`` (the candidates' schedules, then the page)."""
    sql = _statements(_shape(q, session.get_bind().dialect.name))
    params = _params(q, now, stale_after_days)
    if q.open_now:
        ids = [r.id for r in session.execute(sql.schedules, params)
               if domain.is_open(_schedule(r), now)]
        page_ids = ids[q.offset:q.offset + q.limit]
        if not page_ids:
            return [], len(ids)
        rank = {sid: i for i, sid in enumerate(page_ids)}
        rows = session.execute(sql.by_ids, {"ids": page_ids}).all()
        return sorted(rows, key=lambda r: rank[r.id]), len(ids)
    if q.lat is not None:
        rows = session.execute(sql.page, params).all()
        total = rows[0].total if rows else session.execute(sql.count, params).scalar_one()
        return list(rows), int(total)
    total = session.execute(sql.count, params).scalar_one()
    return list(session.execute(sql.page, params).all()), int(total)
