"""Repository of matching's registry view beyond the snapshot itself: the spatial candidate
index (``service_cells``), services per category (``registry_counts``) and each service's
record of answering offers (``service_history``).

A decision reads only the services indexed under the referral's need and one of the cells
covering its location (``cells.lookup_cells``): an indexed range scan, never the whole
directory. How many services the category and area filters removed comes from
``registry_counts``, so the eliminations stay complete without counting rows.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Float, and_, bindparam, delete, func, or_, select, text, update
from sqlalchemy.orm import Session

from servicekit import geo
from servicekit.db import upsert

from . import cells, domain
from .eligibility import in_area
from .tables import (
    registry_counts,
    service_cells,
    service_history,
    service_load,
    service_view,
    to_candidate,
)

ALL = "*"
BOX = ("lat_min", "lat_max", "lon_min", "lon_max")


# --- index maintenance -----------------------------------------------------------------------
def indexed_categories(session: Session, service_id: str) -> frozenset[str] | None:
    """Categories a stored service counts under; None when it is not stored."""
    row = session.execute(select(service_view.c.categories)
                          .where(service_view.c.service_id == service_id)).first()
    return None if row is None else frozenset(row.categories)


def _shift_counts(session: Session, deltas: dict[str, int]) -> None:
    for category, delta in sorted(deltas.items()):  # fixed order: no lock-order deadlocks
        if not delta:
            continue
        session.execute(upsert(session, registry_counts).values(
            category=category, services=0).on_conflict_do_nothing(
            index_elements=[registry_counts.c.category]))
        session.execute(update(registry_counts).where(registry_counts.c.category == category)
                        .values(services=registry_counts.c.services + delta))


# the change log the workers' in-memory indexes follow (``index.py``): one row per service,
# naming the transaction that changed it last (a tombstone stays after a removal)
_NOTE_CHANGE = {
    "postgresql": ("INSERT INTO directory_changes (service_id, xact) "
                   "VALUES (:sid, pg_current_xact_id()::text::bigint) "
                   "ON CONFLICT (service_id) DO UPDATE SET xact = excluded.xact"),
    # SQLite has one writer at a time: a counter taken under the write lock is committed
    # in the order it is taken
    "sqlite": ("INSERT INTO directory_changes (service_id, xact) "
               "VALUES (:sid, (SELECT COALESCE(MAX(xact), 0) + 1 FROM directory_changes)) "
               "ON CONFLICT (service_id) DO UPDATE SET xact = excluded.xact"),
}


def note_change(session: Session, service_id: str) -> None:
    """Log that this transaction changed (stored or removed) ``service_id``."""
    sql = _NOTE_CHANGE[session.get_bind().dialect.name]
    session.execute(text(sql), {"sid": service_id})


def reindex(session: Session, row: dict[str, Any], before: frozenset[str] | None) -> None:
    """Index a stored snapshot under its cells and categories; keep the counts right.
    ``before``: the categories of the snapshot it replaced (None: a new service)."""
    sid, after = row["service_id"], frozenset(row["categories"])
    note_change(session, sid)
    deltas = {c: 1 for c in after - (before or frozenset())}
    deltas.update({c: -1 for c in (before or frozenset()) - after})
    if before is None:
        deltas[ALL] = 1
    _shift_counts(session, deltas)
    session.execute(delete(service_cells).where(service_cells.c.service_id == sid))
    values = index_rows(row)
    if values:
        session.execute(service_cells.insert(), values)


def index_rows(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``service_cells`` rows of a stored snapshot: one per (category, cell), each with
    the service's reach box (NULLs when it has none)."""
    points = [(p["lat"], p["lon"]) for p in row["locations"]]
    covered = cells.service_cells(points, row["radius_km"], row["area_geohashes"])
    box = dict(zip(BOX, cells.reach_box(points, row["radius_km"], row["area_geohashes"])
                   or (None,) * 4, strict=True))
    return [{"category": c, "cell": cell, "service_id": row["service_id"], **box}
            for c in sorted(frozenset(row["categories"])) for cell in sorted(covered)]


def unindex(session: Session, service_id: str, before: frozenset[str] | None) -> None:
    if before is None:
        return
    note_change(session, service_id)
    _shift_counts(session, {**{c: -1 for c in before}, ALL: -1})
    session.execute(delete(service_cells).where(service_cells.c.service_id == service_id))


# --- reading candidates ----------------------------------------------------------------------
# what ``to_candidate`` reads: never the whole ``snapshot`` (the widest column by far)
_CANDIDATE_COLUMNS = [service_view.c[name] for name in (
    "service_id", "organization_id", "status", "categories", "locations", "radius_km",
    "area_geohashes", "age_min", "age_max", "genders", "populations", "languages",
    "interpretation_available", "schedule", "capacity_max", "accepting")]


def _candidate_query() -> Any:
    return (select(*_CANDIDATE_COLUMNS,
                   func.coalesce(service_load.c.open_offers, 0).label("open_offers"),
                   func.coalesce(service_load.c.active_cases, 0).label("active_cases"),
                   func.coalesce(service_history.c.answered, 0).label("answered"),
                   func.coalesce(service_history.c.accepted, 0).label("accepted"),
                   func.coalesce(service_history.c.timed, 0).label("timed"),
                   func.coalesce(service_history.c.response_s_total, 0.0)
                   .label("response_s_total"))
            .select_from(service_view
                         .outerjoin(service_load,
                                    service_load.c.service_id == service_view.c.service_id)
                         .outerjoin(service_history,
                                    service_history.c.service_id == service_view.c.service_id)))


def _count_of(category: Any) -> Any:
    return (select(registry_counts.c.services).where(registry_counts.c.category == category)
            .scalar_subquery())


@lru_cache(maxsize=1)
def _nearby_statement() -> Any:
    """The hot query, built once (building a statement costs more than running it): ids,
    snapshot versions, load and history of the services indexed near a point, plus the
    counts. A fixed shape with bound parameters, so the driver prepares it once."""
    sc = service_cells.c
    lat, lon = bindparam("lat", type_=Float), bindparam("lon", type_=Float)
    near = (select(sc.service_id)
            .where(sc.category == bindparam("need"),
                   sc.cell.in_(bindparam("cells", expanding=True)),
                   or_(sc.lat_min.is_(None),
                       and_(sc.lat_min <= lat, sc.lat_max >= lat,
                            sc.lon_min <= lon, sc.lon_max >= lon))))
    return (select(service_view.c.service_id, service_view.c.updated_at,
                   func.coalesce(service_load.c.open_offers, 0).label("open_offers"),
                   func.coalesce(service_load.c.active_cases, 0).label("active_cases"),
                   func.coalesce(service_history.c.answered, 0).label("answered"),
                   func.coalesce(service_history.c.accepted, 0).label("accepted"),
                   func.coalesce(service_history.c.timed, 0).label("timed"),
                   func.coalesce(service_history.c.response_s_total, 0.0)
                   .label("response_s_total"),
                   _count_of(ALL).label("n_all"), _count_of(bindparam("need")).label("n_need"))
            .select_from(service_view
                         .outerjoin(service_load,
                                    service_load.c.service_id == service_view.c.service_id)
                         .outerjoin(service_history,
                                    service_history.c.service_id == service_view.c.service_id))
            .where(service_view.c.service_id.in_(near)).order_by(service_view.c.service_id))


@dataclass
class CandidateCache:
    """Parsed snapshots (the static part of a candidate) by service id, each with the
    ``updated_at`` it was parsed from. Every read compares that with the stored version,
    so a changed service is re-read at once; load and history are never cached. Derived
    data only: each replica fills its own, nothing depends on it being warm."""

    max_entries: int = 200_000
    entries: dict[str, tuple[Any, domain.Candidate]] = field(default_factory=dict)

    def get(self, service_id: str, version: Any) -> domain.Candidate | None:
        entry = self.entries.get(service_id)
        return entry[1] if entry is not None and entry[0] == version else None

    def put(self, service_id: str, version: Any, candidate: domain.Candidate) -> None:
        if len(self.entries) >= self.max_entries:
            self.entries.clear()  # crude but bounded; refills from the next decisions
        self.entries[service_id] = (version, candidate)


    def warm(self, session: Session) -> int:
        """Parse every stored snapshot at once (one read instead of one per first sight;
        optional: versions are still checked on every read). Returns how many."""
        rows = session.execute(_candidate_query().add_columns(service_view.c.updated_at))
        count = 0
        for count, row in enumerate(rows, 1):
            self.put(row.service_id, row.updated_at, to_candidate(row))
        return count


@lru_cache(maxsize=1)
def _snapshots_statement() -> Any:
    return (_candidate_query().add_columns(service_view.c.updated_at)
            .where(service_view.c.service_id.in_(bindparam("ids", expanding=True))))


def _parse_missing(session: Session, ids: list[str], cache: CandidateCache) -> None:
    for row in session.execute(_snapshots_statement(), {"ids": ids}):
        cache.put(row.service_id, row.updated_at, to_candidate(row))


def _with_load(static: domain.Candidate, row: Sequence[Any]) -> domain.Candidate:
    """``static`` with a ``_read_nearby`` row's load and history: ``dataclasses.replace``
    without its per-field ``__init__`` (a tenth of the cost; runs once per candidate)."""
    c = object.__new__(domain.Candidate)
    vars(c).update(vars(static))
    timed = row[6]
    vars(c).update(open_offers=row[2], active_cases=row[3], answered=row[4],
                   accepted=row[5], mean_response_s=row[7] / timed if timed else None)
    return c


# the hot query as PostgreSQL text (same shape and columns as ``_nearby_statement``): run
# straight on the driver as a server-side prepared statement, it skips SQLAlchemy's
# per-execution compile-cache lookup and parameter processing, the larger part of a
# decision's client CPU once the candidates are few
_NEARBY_PG = """
SELECT v.service_id, v.updated_at,
       COALESCE(l.open_offers, 0), COALESCE(l.active_cases, 0),
       COALESCE(h.answered, 0), COALESCE(h.accepted, 0), COALESCE(h.timed, 0),
       COALESCE(h.response_s_total, 0.0),
       (SELECT services FROM registry_counts WHERE category = '*'),
       (SELECT services FROM registry_counts WHERE category = %(need)s)
FROM service_view v
LEFT OUTER JOIN service_load l ON l.service_id = v.service_id
LEFT OUTER JOIN service_history h ON h.service_id = v.service_id
WHERE v.service_id IN (
    SELECT c.service_id FROM service_cells c
    WHERE c.category = %(need)s AND c.cell = ANY(%(cells)s)
      AND (c.lat_min IS NULL OR (c.lat_min <= %(lat)s AND c.lat_max >= %(lat)s
                                 AND c.lon_min <= %(lon)s AND c.lon_max >= %(lon)s)))
ORDER BY v.service_id
"""


def _read_nearby(session: Session, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
    """Rows (service_id, updated_at, open_offers, active_cases, answered, accepted, timed,
    response_s_total, n_all, n_need) of the services indexed near a point."""
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        with conn.connection.driver_connection.cursor() as cur:
            return cur.execute(_NEARBY_PG, params, prepare=True).fetchall()
    return conn.execute(_nearby_statement(), params).all()  # SQLite (the embedded default)


def centre(geohash: str) -> tuple[float, float]:
    """The point a referral in ``geohash`` carries (the cell centre, as ``geo.coarsen``)."""
    lat, lon = geo.decode(geohash)
    return round(lat, 3), round(lon, 3)


@dataclass
class Nearby:
    """What one indexed read found: the candidates covering the point, the index rows
    read (the cost of the read), and (directory size, services offering the need)."""

    candidates: list[domain.Candidate]
    rows_read: int
    totals: tuple[int, int] | None


def nearby(session: Session, need: str, geohash: str, cache: CandidateCache | None = None,
           at: tuple[float, float] | None = None) -> Nearby:
    """Services offering ``need`` indexed under a cell covering ``geohash`` whose reach box
    (if any) holds the point ``at`` (default: the cell centre), with their current load
    and history; only those passing the exact area check (``eligibility.in_area``) are
    returned. Snapshots come from ``cache`` when their version matches, else are read and
    parsed; the area check runs on the cached snapshot, before load is attached."""
    cache = cache if cache is not None else CandidateCache()
    lat, lon = at if at is not None else centre(geohash)
    rows = _read_nearby(session, {"need": need, "cells": cells.lookup_cells(geohash),
                                  "lat": lat, "lon": lon})
    missing = [r[0] for r in rows if cache.get(r[0], r[1]) is None]
    if missing:
        _parse_missing(session, missing, cache)
    point = domain.Referral(referral_id="", need=need, urgency="", lat=lat, lon=lon,
                            geohash=geohash)
    found = []
    for row in rows:
        static = cache.get(row[0], row[1])
        if static is None:  # changed between the two reads: use the newer snapshot
            static = cache.entries[row[0]][1]
        if not in_area(point, static):
            continue
        found.append(_with_load(static, row))
    totals = (int(rows[0][8] or 0), int(rows[0][9] or 0)) if rows else None
    return Nearby(found, len(rows), totals)


def every_service(session: Session) -> list[domain.Candidate]:
    """The whole directory (the linear-scan baseline of the benchmark; never for deciding)."""
    query = _candidate_query().order_by(service_view.c.service_id)
    return [to_candidate(row) for row in session.execute(query)]


def counts(session: Session, need: str) -> tuple[int, int]:
    """(services in the directory, services offering ``need``)."""
    rows = dict(session.execute(select(registry_counts.c.category, registry_counts.c.services)
                                .where(registry_counts.c.category.in_([ALL, need]))).all())
    return int(rows.get(ALL, 0)), int(rows.get(need, 0))


def candidates_for(session: Session, need: str, geohash: str,
                   cache: CandidateCache | None = None, at: tuple[float, float] | None = None
                   ) -> tuple[list[domain.Candidate], dict[str, int]]:
    """Candidates offering ``need`` whose area covers the resident (cell ``geohash``,
    point ``at``), and how many services the category and area pre-filters removed.

    Every service offering the need that does not cover the resident counts under
    ``out_of_area``, whatever else it fails: the counts are those of a linear scan that
    checks the area right after the category, independent of how coarse the index is."""
    near = nearby(session, need, geohash, cache, at)
    total, offering = near.totals if near.totals is not None else counts(session, need)
    return near.candidates, {"category": max(0, total - offering),
                             "out_of_area": max(0, offering - len(near.candidates))}


def count_services(session: Session) -> int:
    return counts(session, ALL)[0]


# --- history of answers ----------------------------------------------------------------------
def record_answer(session: Session, service_id: str, *, accepted: bool,
                  response_s: float | None, now: datetime) -> None:
    """One answered offer (accepted, declined or expired) and how long it took."""
    session.execute(upsert(session, service_history).values(
        service_id=service_id, answered=0, accepted=0, timed=0, response_s_total=0.0,
        updated_at=now,
    ).on_conflict_do_nothing(index_elements=[service_history.c.service_id]))
    h = service_history.c
    session.execute(update(service_history).where(h.service_id == service_id).values(
        answered=h.answered + 1, accepted=h.accepted + (1 if accepted else 0),
        timed=h.timed + (0 if response_s is None else 1),
        response_s_total=h.response_s_total + max(0.0, response_s or 0.0), updated_at=now))


def has_headroom(session: Session, service_id: str) -> bool:
    """Whether a stored, active, accepting service has a free place now."""
    row = session.execute(
        select(service_view.c.capacity_max, service_view.c.status, service_view.c.accepting,
               func.coalesce(service_load.c.open_offers, 0).label("open_offers"),
               func.coalesce(service_load.c.active_cases, 0).label("active_cases"))
        .select_from(service_view.outerjoin(
            service_load, service_load.c.service_id == service_view.c.service_id))
        .where(service_view.c.service_id == service_id)).first()
    return (row is not None and row.status == "active" and bool(row.accepting)
            and row.open_offers + row.active_cases < row.capacity_max)
