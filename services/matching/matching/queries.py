"""matching's read side for the HTTP API: decisions, load, dry-run simulation. Writes nothing."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from servicekit import geo
from servicekit.auth import Principal, same_agency

from . import directory, domain, tables
from .tables import decisions, service_load, service_view


class NotFound(Exception):
    pass


def decisions_for(session: Session, principal: Principal, referral_id: str
                  ) -> list[dict[str, Any]]:
    """Every decision for a referral, oldest first (supervisors: their agency's only)."""
    ref = tables.referral(session, referral_id)
    if ref is None or (principal.role == "supervisor"
                       and not same_agency(principal, ref.agency_id)):
        raise NotFound(referral_id)
    rows = session.execute(select(decisions).where(decisions.c.referral_id == referral_id)
                           .order_by(decisions.c.attempt, decisions.c.created_at))
    return [dict(row) for row in rows.mappings()]


def load_report(session: Session, *, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Load (open offers + active cases) against capacity for each known service."""
    open_offers = func.coalesce(service_load.c.open_offers, 0).label("open_offers")
    active_cases = func.coalesce(service_load.c.active_cases, 0).label("active_cases")
    query = (select(service_view.c.service_id, service_view.c.organization_id,
                    service_view.c.status, service_view.c.accepting,
                    service_view.c.capacity_max, open_offers, active_cases)
             .select_from(service_view.outerjoin(
                 service_load, service_load.c.service_id == service_view.c.service_id))
             .order_by(service_view.c.service_id).limit(limit).offset(offset))
    items = []
    for row in session.execute(query).mappings():
        load = row["open_offers"] + row["active_cases"]
        items.append({**row, "load": load, "headroom": max(0, row["capacity_max"] - load)})
    return items, directory.count_services(session)


def simulate(session: Session, body: dict[str, Any], now: datetime,
             weights: domain.Weights = domain.DEFAULT_WEIGHTS,
             cache: directory.CandidateCache | None = None) -> dict[str, Any]:
    """Dry-run a referral profile: ranked candidates and per-constraint eliminations."""
    where = geo.coarsen(body["lat"], body["lon"])  # decide on what a real referral carries
    referral = domain.Referral(
        referral_id="simulation", need=body["need"], urgency=body["urgency"],
        lat=where["lat"], lon=where["lon"], geohash=where["geohash"], age=body.get("age"),
        age_band=body.get("age_band"),
        gender=body.get("gender"), preferred_language=body.get("preferred_language"),
        needs_interpreter=body.get("needs_interpreter", False),
        flags=frozenset(body.get("flags") or ()),
    )
    candidates, pre = directory.candidates_for(session, body["need"], where["geohash"], cache,
                                             (where["lat"], where["lon"]))
    decision = domain.evaluate(referral, candidates, now, weights, pre)
    return {
        "outcome": decision.outcome,
        "candidates_considered": decision.considered,
        "eliminated": dict(decision.eliminated),
        "ranked": [_ranked(item) for item in decision.ranked],
        "excluded": [{"service_id": sid, "code": code} for sid, code in decision.excluded],
        "reasons": [{"code": r.code, "text": r.text} for r in decision.reasons],
    }


def _ranked(item: domain.Ranked) -> dict[str, Any]:
    c = item.candidate
    return {
        "service_id": c.service_id, "organization_id": c.organization_id, "score": item.score,
        "distance_km": None if item.distance_km is None else round(item.distance_km, 2),
        "open_offers": c.open_offers, "active_cases": c.active_cases,
        "capacity_max": c.capacity_max,
        "reasons": [{"code": r.code, "text": r.text} for r in item.reasons],
    }
