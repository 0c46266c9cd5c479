"""matching use cases. Handlers take the open session and never commit.

Event handlers keep the registry view and provider load current and answer every routable
referral with exactly one decision (``routing.proposed`` or ``routing.exhausted``).
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from servicekit import events, logs, outbox

from . import domain, tables
from .tables import decisions, referral_view

SOURCE = "matching"
WEIGHTS = domain.DEFAULT_WEIGHTS

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


# --- provider.events -------------------------------------------------------------------------
def service_row(d: dict[str, Any]) -> dict[str, Any]:
    """service_view columns from ``provider.service_upserted`` data (JSON-ready form)."""
    area = d["service_area"]
    return {
        "service_id": d["service_id"], "organization_id": d["organization_id"],
        "status": d["status"], "categories": sorted(set(d["categories"])),
        "locations": d["locations"], "radius_km": area.get("radius_km"),
        "area_geohashes": area.get("geohashes") or [], "age_min": d["age_min"],
        "age_max": d["age_max"], "genders": d["genders"], "populations": d["populations"],
        "languages": d["languages"], "interpretation_available": d["interpretation_available"],
        "schedule": d["schedule"], "capacity_max": d["capacity"]["maximum"],
        "accepting": d["capacity"]["accepting"],
        "updated_at": events.parse_time(d["updated_at"]), "snapshot": d,
    }


def on_service_upserted(session: Session, env: events.Envelope) -> None:
    """Store the routing snapshot of a service and make sure it has a load row; a service
    that can take referrals gives unmatched referrals of its categories another chance."""
    tables.upsert_service(session, service_row(env.data), env.data["categories"])
    now = _now()
    tables.ensure_load(session, env.data["service_id"], now)
    if env.data["status"] == "active" and env.data["capacity"]["accepting"]:
        for referral_id in tables.unmatched_referrals(session, env.data["categories"]):
            _retry_if_placeable(session, referral_id, now)


def _retry_if_placeable(session: Session, referral_id: str, now: datetime) -> None:
    """Route an unmatched referral again, but only when some candidate now fits: an
    unchanged verdict would only repeat the exhaustion already reported."""
    ref = tables.referral(session, referral_id, lock=True)
    if ref is None or ref.geohash is None or ref.status != "unmatched":
        return
    referral = tables.to_referral(ref, tables.tried_services(session, referral_id))
    candidates, pre = candidates_for(session, ref.need)
    if domain.evaluate(referral, candidates, now, WEIGHTS, pre).best is not None:
        route(session, referral_id, now)


def on_service_removed(session: Session, env: events.Envelope) -> None:
    tables.delete_service(session, env.data["service_id"])


# --- referral.events -------------------------------------------------------------------------
def on_referral_submitted(session: Session, env: events.Envelope) -> None:
    """Remember the referral's de-identified facts and make the first decision."""
    d, now = env.data, _now()
    where = d["coarse_location"]
    known = not tables.insert_referral(session, {
        "referral_id": d["referral_id"], "need": d["need"], "urgency": d["urgency"],
        "geohash": where["geohash"], "lat": where["lat"], "lon": where["lon"],
        "eligibility": d["eligibility"], "status": "submitted", "attempt": 0,
        "agency_id": d["agency_id"], "service_id": None,
        "submitted_at": events.parse_time(d["submitted_at"]), "updated_at": now,
    })
    if known:
        log.info("referral already known", extra=logs.log_fields(referral_id=d["referral_id"]))
        return
    route(session, d["referral_id"], now)


def on_status_changed(session: Session, env: events.Envelope) -> None:
    """Keep the offered service's load right, remember tried services, re-route when the
    referral is routable again."""
    d, now = env.data, _now()
    ref = tables.referral(session, d["referral_id"], lock=True)
    reserved = bool(d.get("proposal_id")) and (
        tables.decision_by_event(session, d["proposal_id"]) is not None)
    change = domain.load_change(d["from_status"], d["to_status"], d["reason_code"],
                                reserved=reserved)
    service_id = _offer_service(session, d, ref)
    if service_id is not None:
        tables.adjust_load(session, service_id, change.open_offers, change.active_cases, now)
        if change.mark_tried:
            tables.mark_tried(session, d["referral_id"], service_id, now)
    elif change.open_offers or change.active_cases:
        log.warning("status change names no service: load not adjusted", extra=logs.log_fields(
            referral_id=d["referral_id"], event_id=env.id))
    if ref is None:
        return  # submitted before this view existed: load settled, nothing to route
    _follow_status(session, ref, d, now)
    if change.reevaluate:
        route(session, d["referral_id"], now)
    elif d["to_status"] == "unmatched":
        # A service may have appeared between the exhausted decision and this answer.
        _retry_if_placeable(session, d["referral_id"], now)


def on_referral_erased(session: Session, env: events.Envelope) -> None:
    """Purge what could point back to the resident: coarse location, facets, distances."""
    rid = env.data["referral_id"]
    session.execute(update(referral_view).where(referral_view.c.referral_id == rid).values(
        geohash=None, lat=None, lon=None, eligibility={}, updated_at=_now()))
    session.execute(update(decisions).where(decisions.c.referral_id == rid).values(reasons=[]))


def _offer_service(session: Session, d: dict[str, Any], ref: Any) -> str | None:
    """The service whose load a status change moves: the offer's, else the proposal's,
    else the one the referral was last offered to."""
    if d.get("offer"):
        return str(d["offer"]["service_id"])
    if d.get("proposal_id"):
        row = tables.decision_by_event(session, d["proposal_id"])
        if row is not None and row.service_id:
            return str(row.service_id)
    return None if ref is None else ref.service_id


def _follow_status(session: Session, ref: Any, d: dict[str, Any], now: datetime) -> None:
    to_status, service_id = d["to_status"], ref.service_id
    if to_status == "offered" and d.get("offer") and d["reason_code"] != "proposal_void":
        service_id = d["offer"]["service_id"]
    elif to_status in ("submitted", "unmatched") or to_status in domain.TERMINAL:
        service_id = None
    session.execute(update(referral_view)
                    .where(referral_view.c.referral_id == ref.referral_id)
                    .values(status=to_status, service_id=service_id, updated_at=now))


# --- deciding --------------------------------------------------------------------------------
def candidates_for(session: Session, need: str) -> tuple[list[domain.Candidate], dict[str, int]]:
    """Candidates offering ``need`` (filtered in SQL) and how many the filter removed."""
    candidates = [tables.to_candidate(row) for row in tables.candidate_rows(session, need)]
    return candidates, {"category": tables.count_services(session) - len(candidates)}


def route(session: Session, referral_id: str, now: datetime) -> domain.Decision | None:
    """Decide for a routable referral, reserve the chosen place, record and emit it."""
    ref = tables.referral(session, referral_id, lock=True)
    if ref is None or ref.geohash is None:
        log.warning("referral cannot be routed: facts missing or erased",
                    extra=logs.log_fields(referral_id=referral_id))
        return None
    referral = tables.to_referral(ref, tables.tried_services(session, referral_id))
    candidates, pre = candidates_for(session, ref.need)
    decision = _decide_and_reserve(session, referral, candidates, pre, now)
    _record(session, referral_id, ref.attempt + 1, decision, now)
    return decision


def _decide_and_reserve(session: Session, referral: domain.Referral,
                        candidates: Sequence[domain.Candidate], pre: dict[str, int],
                        now: datetime) -> domain.Decision:
    """Evaluate; take a place at the best candidate with a conditional UPDATE. A candidate
    another worker filled meanwhile counts as full and the evaluation runs again."""
    pool = list(candidates)
    while True:
        decision = domain.evaluate(referral, pool, now, WEIGHTS, pre)
        best = decision.best
        if best is None:
            return decision
        chosen = best.candidate
        tables.ensure_load(session, chosen.service_id, now)
        if tables.reserve(session, chosen.service_id, chosen.capacity_max, now):
            return decision
        log.info("candidate filled concurrently", extra=logs.log_fields(
            referral_id=referral.referral_id, service_id=chosen.service_id))
        pool = [domain.as_full(c) if c.service_id == chosen.service_id else c for c in pool]


def _record(session: Session, referral_id: str, attempt: int, decision: domain.Decision,
            now: datetime) -> None:
    """Emit the decision through the outbox and keep it, with its reasons, for supervisors."""
    reasons = [{"code": r.code, "text": r.text} for r in decision.reasons]
    eliminated = dict(decision.eliminated)
    best = decision.best
    if best is None:
        env = outbox.emit(session, events.ROUTING_EXHAUSTED, subject=referral_id, source=SOURCE,
                          data={"referral_id": referral_id, "attempt": attempt,
                                "eliminated": eliminated, "reasons": reasons,
                                "candidates_considered": decision.considered,
                                "occurred_at": now})
    else:
        env = outbox.emit(session, events.ROUTING_PROPOSED, subject=referral_id, source=SOURCE,
                          data={"referral_id": referral_id, "attempt": attempt,
                                "service_id": best.candidate.service_id,
                                "organization_id": best.candidate.organization_id,
                                "score": best.score,
                                "reasons": reasons, "eliminated": eliminated,
                                "proposed_at": now})
    chosen = None if best is None else best.candidate
    session.execute(decisions.insert().values(
        id=str(uuid.uuid4()), referral_id=referral_id, attempt=attempt,
        outcome=decision.outcome, service_id=chosen and chosen.service_id,
        organization_id=chosen and chosen.organization_id,
        score=None if best is None else best.score, reasons=reasons, eliminated=eliminated,
        candidates=decision.considered, created_at=now, event_id=env.id))
    session.execute(update(referral_view).where(referral_view.c.referral_id == referral_id)
                    .values(attempt=attempt, updated_at=now))
    log.info("routing decision", extra=logs.log_fields(
        referral_id=referral_id, attempt=attempt, outcome=decision.outcome,
        service_id=chosen and chosen.service_id))
