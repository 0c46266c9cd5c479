"""Deciding: evaluate a referral against its nearby candidates, reserve the chosen place
with a conditional UPDATE, record the decision with its reasons and emit it (outbox).

Every decision is one row in ``decisions`` and one event on ``routing.decisions``, written
in the transaction that reserved the place, under the referral's row lock; a unique index
on (referral, attempt) makes a second decision for the same attempt impossible.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session

from servicekit import events, logs, outbox

from . import directory, domain, tables
from .tables import decisions, referral_view

SOURCE = "matching"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Policy:
    """Configuration of deciding (from ``MATCHING_*`` settings; see bootstrap)."""

    weights: domain.Weights = domain.DEFAULT_WEIGHTS
    retry_batch: int = 50  # unmatched referrals looked at per freed place or new service
    cache: directory.CandidateCache | None = None  # parsed snapshots (None: parse each time)


DEFAULT_POLICY = Policy()


def route(session: Session, referral_id: str, now: datetime, policy: Policy = DEFAULT_POLICY,
          *, only_if_placeable: bool = False, retry: bool = False) -> domain.Decision | None:
    """Decide for a routable referral, reserve the chosen place, record and emit it.

    ``only_if_placeable``: record nothing when nobody fits (a retry of an unmatched
    referral must not repeat the exhaustion already reported). ``retry``: skip the referral
    when another transaction holds it (that one is deciding already).
    """
    ref = tables.referral(session, referral_id, lock=True, skip_locked=retry)
    if retry and (ref is None or ref.status != "unmatched"):
        return None  # answered meanwhile, or a retry's proposal still awaits its answer
    if ref is None or ref.geohash is None:
        if not retry:
            log.warning("referral cannot be routed: facts missing or erased",
                        extra=logs.log_fields(referral_id=referral_id))
        return None
    referral = tables.to_referral(ref, tables.tried_services(session, referral_id))
    candidates, pre = directory.candidates_for(session, ref.need, ref.geohash, policy.cache,
                                             (ref.lat, ref.lon))
    decision = decide_and_reserve(session, referral, candidates, pre, now, policy.weights)
    if only_if_placeable and decision.best is None:
        return None
    record(session, referral_id, ref.attempt + 1, decision, now)
    return decision


def decide_and_reserve(session: Session, referral: domain.Referral,
                       candidates: Sequence[domain.Candidate], pre: dict[str, int],
                       now: datetime, weights: domain.Weights) -> domain.Decision:
    """Evaluate; take a place at the best candidate with a conditional UPDATE. A candidate
    another worker filled meanwhile counts as full and the evaluation runs again."""
    pool = list(candidates)
    while True:
        decision = domain.evaluate(referral, pool, now, weights, pre)
        best = decision.best
        if best is None:
            return decision
        chosen = best.candidate
        if tables.reserve(session, chosen.service_id, chosen.capacity_max, now):
            return decision
        tables.ensure_load(session, chosen.service_id, now)  # rows predating the load table
        if tables.reserve(session, chosen.service_id, chosen.capacity_max, now):
            return decision
        log.info("candidate filled concurrently", extra=logs.log_fields(
            referral_id=referral.referral_id, service_id=chosen.service_id))
        pool = [domain.as_full(c) if c.service_id == chosen.service_id else c for c in pool]


def record(session: Session, referral_id: str, attempt: int, decision: domain.Decision,
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
    # "proposed": awaiting referral-intake's answer, which sets the real status; until then
    # no retry may propose this referral a second time
    status = {} if best is None else {"status": "proposed"}
    session.execute(update(referral_view).where(referral_view.c.referral_id == referral_id)
                    .values(attempt=attempt, updated_at=now, **status))
    log.info("routing decision", extra=logs.log_fields(
        referral_id=referral_id, attempt=attempt, outcome=decision.outcome,
        service_id=chosen and chosen.service_id))


def retry_unmatched(session: Session, categories: list[str], now: datetime, policy: Policy,
                    *, freed_service: str | None = None) -> int:
    """Give unmatched referrals of ``categories`` another chance, most urgent and oldest
    first; with ``freed_service``, stop once that service is full again. Returns how many
    were proposed."""
    proposed = 0
    for referral_id in tables.unmatched_referrals(session, categories, policy.retry_batch):
        if freed_service is not None and not directory.has_headroom(session, freed_service):
            break
        if route(session, referral_id, now, policy, only_if_placeable=True, retry=True):
            proposed += 1
    return proposed
