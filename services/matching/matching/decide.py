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
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.orm import Session

from servicekit import events, logs, outbox

from . import directory, domain, tables
from .index import DirectoryIndex, Found
from .tables import decisions, referral_view

SOURCE = "matching"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Policy:
    """Configuration of deciding (from ``MATCHING_*`` settings; see bootstrap)."""

    weights: domain.Weights = domain.DEFAULT_WEIGHTS
    retry_batch: int = 50  # unmatched referrals looked at per freed place or new service
    cache: directory.CandidateCache | None = None  # parsed snapshots (None: parse each time)
    # the worker's in-memory directory (None: candidates from the database index)
    index: DirectoryIndex | None = None


DEFAULT_POLICY = Policy()


def route(session: Session, referral_id: str, now: datetime, policy: Policy = DEFAULT_POLICY,
          *, only_if_placeable: bool = False, retry: bool = False,
          inserted: Any = None, deferred: list[Recorded] | None = None,
          held: Held | None = None, found: Found | None = None) -> domain.Decision | None:
    """Decide for a routable referral, reserve the chosen place, record and emit it.

    ``only_if_placeable``: record nothing when nobody fits (a retry of an unmatched
    referral must not repeat the exhaustion already reported). ``retry``: skip the referral
    when another transaction holds it (that one is deciding already). ``inserted``: the
    ``referral_view`` row this transaction has just inserted (so it holds its lock and
    knows it: not read again). ``deferred``: append what to record there instead of
    recording it now (``record_many`` writes a run's decisions together). ``held``: places
    this transaction takes later (``Held.reserve``): counted in the candidates' load, and
    the chosen place added to them instead of reserved now. ``found``: the index's lookup
    for this referral, made already (``DirectoryIndex.lookup_many`` for a run), used
    instead of looking up again.
    """
    ref = inserted if inserted is not None else tables.referral(
        session, referral_id, lock=True, skip_locked=retry)
    if retry and (ref is None or ref.status != "unmatched"):
        return None  # answered meanwhile, or a retry's proposal still awaits its answer
    if ref is None or ref.geohash is None:
        if not retry:
            log.warning("referral cannot be routed: facts missing or erased",
                        extra=logs.log_fields(referral_id=referral_id))
        return None
    if found is None and policy.index is not None:
        found = policy.index.lookup(session, ref.need, ref.geohash, (ref.lat, ref.lon),
                                    referral_id=referral_id)
    if found is not None:
        referral = tables.to_referral(ref, found.tried)
        candidates, pre = found.candidates, found.pre
    else:
        referral = tables.to_referral(ref, tables.tried_services(session, referral_id))
        candidates, pre = directory.candidates_for(session, ref.need, ref.geohash,
                                                   policy.cache, (ref.lat, ref.lon))
    if held is not None:
        candidates = held.counted(candidates)
        decision = domain.evaluate(referral, candidates, now, policy.weights, pre)
        if decision.best is not None:
            held.add(decision.best.candidate, now)
    else:
        decision = decide_and_reserve(session, referral, candidates, pre, now, policy.weights)
    if only_if_placeable and decision.best is None:
        return None
    if deferred is not None:
        deferred.append(Recorded(referral_id, ref.attempt + 1, decision, now))
    else:
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


class HeldPlaceTaken(Exception):
    """A place a run of decisions counted on was taken by another transaction meanwhile:
    the run is rolled back (the consumer runner then decides its events one at a time,
    each re-evaluating as ``decide_and_reserve`` does)."""


class Held:
    """Places chosen by a run of decisions in one transaction, reserved together at its end
    (``reserve``) with the same guard as ``tables.reserve``: each service's load plus the
    places taken stays within its capacity. Until then each later decision of the run sees
    them in its candidates' load, as it would see reservations already made."""

    def __init__(self) -> None:
        self.places: dict[str, list[Any]] = {}  # service_id: [count, capacity, last now]

    def counted(self, candidates: Sequence[domain.Candidate]) -> Sequence[domain.Candidate]:
        if not self.places:
            return candidates
        return [c if (p := self.places.get(c.service_id)) is None
                else replace(c, open_offers=c.open_offers + p[0]) for c in candidates]

    def add(self, chosen: domain.Candidate, now: datetime) -> None:
        p = self.places.setdefault(chosen.service_id, [0, chosen.capacity_max, now])
        p[0] += 1
        p[2] = now

    def reserve(self, session: Session) -> None:
        """Take every held place; ``HeldPlaceTaken`` when a service has no longer room."""
        if not self.places:
            return
        taken = tables.reserve_many(session, [(sid, n, cap, now) for sid, (n, cap, now)
                                              in sorted(self.places.items())])
        if taken != len(self.places):
            raise HeldPlaceTaken(f"{len(self.places) - taken} services filled concurrently")


@dataclass(frozen=True)
class Recorded:
    """A decision made and not yet written (see ``route``'s ``deferred``)."""

    referral_id: str
    attempt: int
    decision: domain.Decision
    now: datetime
    # what ``record`` would give the event: the ``logs.correlation`` the decision was made
    # under (the runner's, of the event that caused it)
    correlation_id: str | None = field(default_factory=logs.correlation_id.get)
    causation_id: str | None = field(default_factory=logs.causation_id.get)


def _event_data(r: Recorded) -> tuple[str, dict[str, Any], list[dict[str, str]]]:
    """The event type and data of a decision, and its reasons as stored."""
    decision, best = r.decision, r.decision.best
    reasons = [{"code": x.code, "text": x.text} for x in decision.reasons]
    eliminated = dict(decision.eliminated)
    if best is None:
        return events.ROUTING_EXHAUSTED, {
            "referral_id": r.referral_id, "attempt": r.attempt, "eliminated": eliminated,
            "reasons": reasons, "candidates_considered": decision.considered,
            "occurred_at": r.now}, reasons
    return events.ROUTING_PROPOSED, {
        "referral_id": r.referral_id, "attempt": r.attempt,
        "service_id": best.candidate.service_id,
        "organization_id": best.candidate.organization_id, "score": best.score,
        "reasons": reasons, "eliminated": eliminated, "proposed_at": r.now}, reasons


def _row_params(r: Recorded, reasons: list[dict[str, str]], event_id: str) -> dict[str, Any]:
    decision, best = r.decision, r.decision.best
    chosen = None if best is None else best.candidate
    # "proposed": awaiting referral-intake's answer, which sets the real status; until then
    # no retry may propose this referral a second time
    return {"d_id": str(uuid.uuid4()), "d_referral": r.referral_id, "d_attempt": r.attempt,
            "d_outcome": decision.outcome, "d_service": chosen and chosen.service_id,
            "d_organization": chosen and chosen.organization_id,
            "d_score": None if best is None else best.score, "d_reasons": reasons,
            "d_eliminated": dict(decision.eliminated), "d_candidates": decision.considered,
            "d_created": r.now, "d_event": event_id, "r_referral": r.referral_id,
            "r_attempt": r.attempt, "r_updated": r.now, "r_status": "proposed"}


def _logged(r: Recorded) -> None:
    chosen = r.decision.best
    log.info("routing decision", extra=logs.log_fields(
        referral_id=r.referral_id, attempt=r.attempt, outcome=r.decision.outcome,
        service_id=chosen and chosen.candidate.service_id))


def record(session: Session, referral_id: str, attempt: int, decision: domain.Decision,
           now: datetime) -> None:
    """Emit the decision through the outbox and keep it, with its reasons, for supervisors."""
    r = Recorded(referral_id, attempt, decision, now)
    event_type, data, reasons = _event_data(r)
    env = outbox.emit(session, event_type, subject=referral_id, source=SOURCE, data=data)
    conn = session.connection()
    params = _row_params(r, reasons, env.id)
    for stmt in _record_statements(session.get_bind().dialect.name, decision.best is not None):
        conn.execute(stmt, params)
    _logged(r)


def record_many(session: Session, made: list[Recorded]) -> None:
    """``record`` for several decisions of distinct referrals at once: their events in two
    statements per event type (``outbox.emit_many``: the first validated in full, the rest
    built the same way), their rows and referral updates in one executemany each."""
    if len({r.referral_id for r in made}) != len(made):
        raise ValueError("record_many takes one decision per referral")
    sqlite = session.get_bind().dialect.name != "postgresql"
    conn = session.connection()
    for proposed in (True, False):
        mine = [r for r in made if (r.decision.best is not None) is proposed]
        if not mine:
            continue
        built = [_event_data(r) for r in mine]
        envs = outbox.emit_many(session, built[0][0], [(r.referral_id, data) for r, (
            _type, data, _reasons) in zip(mine, built, strict=True)], source=SOURCE,
            validate_each=False, causes=[(r.correlation_id, r.causation_id) for r in mine])
        params = [_row_params(r, reasons, env.id) for r, (_t, _d, reasons), env
                  in zip(mine, built, envs, strict=True)]
        insert, follow = _record_statements("sqlite" if sqlite else "many", proposed)
        conn.execute(insert, params)
        conn.execute(follow, params)
    for r in made:
        with logs.correlation(r.correlation_id, r.causation_id):
            _logged(r)


@lru_cache(maxsize=8)
def _record_statements(dialect: str, proposed: bool) -> tuple[Any, ...]:
    """The decision row and the referral's attempt (and ``proposed`` status): built once;
    on PostgreSQL one statement (the insert as a data-modifying CTE of the update)."""
    d = decisions.c
    insert = decisions.insert().values({
        d.id: bindparam("d_id"), d.referral_id: bindparam("d_referral"),
        d.attempt: bindparam("d_attempt"), d.outcome: bindparam("d_outcome"),
        d.service_id: bindparam("d_service"), d.organization_id: bindparam("d_organization"),
        d.score: bindparam("d_score", type_=d.score.type),
        d.reasons: bindparam("d_reasons", type_=d.reasons.type),
        d.eliminated: bindparam("d_eliminated", type_=d.eliminated.type),
        d.candidates: bindparam("d_candidates"),
        d.created_at: bindparam("d_created", type_=d.created_at.type),
        d.event_id: bindparam("d_event")})
    values = {"attempt": bindparam("r_attempt"),
              "updated_at": bindparam("r_updated", type_=referral_view.c.updated_at.type)}
    if proposed:
        values["status"] = bindparam("r_status")
    follow = (update(referral_view).where(referral_view.c.referral_id == bindparam("r_referral"))
              .values(**values))
    if dialect == "postgresql":  # one row: one statement
        return (follow.add_cte(insert.cte("new_decision")),)
    return insert, follow  # or many rows: two executemany


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
