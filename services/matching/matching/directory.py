"""Repository of matching's registry view beyond the snapshot itself: the spatial candidate
index (``service_cells``), services per category (``registry_counts``) and each service's
record of answering offers (``service_history``).

A decision reads only the services indexed under the referral's need and one of the cells
covering its location (``cells.lookup_cells``): an indexed range scan, never the whole
directory. How many services the category and area filters removed comes from
``registry_counts``, so the eliminations stay complete without counting rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.orm import Session

from servicekit.db import upsert

from . import cells, domain
from .tables import (
    registry_counts,
    service_cells,
    service_history,
    service_load,
    service_view,
    to_candidate,
)

ALL = "*"


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


def reindex(session: Session, row: dict[str, Any], before: frozenset[str] | None) -> None:
    """Index a stored snapshot under its cells and categories; keep the counts right.
    ``before``: the categories of the snapshot it replaced (None: a new service)."""
    sid, after = row["service_id"], frozenset(row["categories"])
    deltas = {c: 1 for c in after - (before or frozenset())}
    deltas.update({c: -1 for c in (before or frozenset()) - after})
    if before is None:
        deltas[ALL] = 1
    _shift_counts(session, deltas)
    session.execute(delete(service_cells).where(service_cells.c.service_id == sid))
    covered = cells.service_cells([(p["lat"], p["lon"]) for p in row["locations"]],
                                  row["radius_km"], row["area_geohashes"])
    values = [{"category": c, "cell": cell, "service_id": sid}
              for c in sorted(after) for cell in sorted(covered)]
    if values:
        session.execute(service_cells.insert(), values)


def unindex(session: Session, service_id: str, before: frozenset[str] | None) -> None:
    if before is None:
        return
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
    near = (select(service_cells.c.service_id)
            .where(service_cells.c.category == bindparam("need"),
                   service_cells.c.cell.in_(bindparam("cells", expanding=True))))
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


def _parse_missing(session: Session, ids: list[str], cache: CandidateCache) -> None:
    rows = session.execute(_candidate_query().add_columns(service_view.c.updated_at)
                           .where(service_view.c.service_id.in_(ids)))
    for row in rows:
        cache.put(row.service_id, row.updated_at, to_candidate(row))


def nearby(session: Session, need: str, geohash: str, cache: CandidateCache | None = None
           ) -> tuple[list[domain.Candidate], tuple[int, int] | None]:
    """Services offering ``need`` indexed under a cell covering ``geohash`` (a semi-join on
    an index range scan of ``service_cells``) with their current load and history, and
    (directory size, services offering ``need``) when at least one row came back.
    Snapshots come from ``cache`` when their version matches, else are read and parsed."""
    cache = cache if cache is not None else CandidateCache()
    rows = session.execute(_nearby_statement(), {
        "need": need, "cells": cells.lookup_cells(geohash)}).all()
    missing = [r.service_id for r in rows if cache.get(r.service_id, r.updated_at) is None]
    if missing:
        _parse_missing(session, missing, cache)
    found = []
    for row in rows:
        static = cache.get(row.service_id, row.updated_at)
        if static is None:  # changed between the two reads: use the newer snapshot
            static = cache.entries[row.service_id][1]
        found.append(replace(
            static, open_offers=row.open_offers, active_cases=row.active_cases,
            answered=row.answered, accepted=row.accepted,
            mean_response_s=row.response_s_total / row.timed if row.timed else None))
    totals = (int(rows[0].n_all or 0), int(rows[0].n_need or 0)) if rows else None
    return found, totals


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
                   cache: CandidateCache | None = None
                   ) -> tuple[list[domain.Candidate], dict[str, int]]:
    """Candidates near ``geohash`` offering ``need``, and how many services the category
    and area pre-filters removed (counted under ``category`` and ``out_of_area``)."""
    found, totals = nearby(session, need, geohash, cache)
    total, offering = totals if totals is not None else counts(session, need)
    return found, {"category": max(0, total - offering),
                   "out_of_area": max(0, offering - len(found))}


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
