"""matching's event handlers. Handlers take the open session and never commit.

They keep the registry view (snapshot, spatial index, counts), provider load and answer
history current, and answer every routable referral with exactly one decision
(``routing.proposed`` or ``routing.exhausted``; see ``decide``). Each takes the ``Policy``
(weights, retry batch) that bootstrap built from settings.
"""
from __future__ import annotations

import logging
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from servicekit import events, logs

from . import directory, domain, tables
from .decide import DEFAULT_POLICY, Held, Policy, Recorded, record_many, retry_unmatched, route
from .index import Found
from .tables import decisions, referral_view

log = logging.getLogger(__name__)
DECLINES = frozenset(events.DECLINE_REASONS)


def _now() -> datetime:
    return datetime.now(UTC)


# --- provider.events -------------------------------------------------------------------------
def service_row(d: dict[str, Any]) -> dict[str, Any]:
    """service_view columns from ``provider.service_upserted`` data (JSON-ready form).
    Fields a newer registry may add are kept in ``snapshot`` and otherwise ignored."""
    area = d.get("service_area") or {}
    return {
        "service_id": d["service_id"], "organization_id": d["organization_id"],
        "status": d["status"], "categories": sorted(set(d["categories"])),
        "locations": d["locations"], "radius_km": area.get("radius_km"),
        "area_geohashes": area.get("geohashes") or [], "age_min": d.get("age_min"),
        "age_max": d.get("age_max"), "genders": d.get("genders") or [],
        "populations": d.get("populations") or [], "languages": d.get("languages") or [],
        "interpretation_available": bool(d.get("interpretation_available")),
        "schedule": d["schedule"], "capacity_max": d["capacity"]["maximum"],
        "accepting": d["capacity"]["accepting"],
        "updated_at": events.parse_time(d["updated_at"]), "snapshot": d,
    }


def on_service_upserted(session: Session, env: events.Envelope,
                        policy: Policy = DEFAULT_POLICY) -> None:
    """Store and index the routing snapshot of a service and make sure it has a load row;
    a service that can take referrals gives unmatched referrals of its categories another
    chance (most urgent, then oldest, first)."""
    row = service_row(env.data)
    before = directory.indexed_categories(session, row["service_id"])
    if not tables.upsert_service(session, row, env.data["categories"]):
        return  # an older snapshot than the one stored
    directory.reindex(session, row, before)
    if policy.index is not None:
        policy.index.stage(session, row["service_id"], row)
    now = _now()
    tables.ensure_load(session, row["service_id"], now)
    if row["status"] == "active" and row["accepting"]:
        retry_unmatched(session, row["categories"], now, policy)


def on_service_removed(session: Session, env: events.Envelope,
                       policy: Policy = DEFAULT_POLICY) -> None:
    sid = env.data["service_id"]
    before = directory.indexed_categories(session, sid)
    tables.delete_service(session, sid)
    directory.unindex(session, sid, before)
    if before is not None and policy.index is not None:
        policy.index.stage(session, sid, None)


# --- referral.events -------------------------------------------------------------------------
def _referral_row(d: dict[str, Any], now: datetime) -> dict[str, Any]:
    where = d["coarse_location"]
    return {
        "referral_id": d["referral_id"], "need": d["need"], "urgency": d["urgency"],
        "geohash": where["geohash"], "lat": where["lat"], "lon": where["lon"],
        "eligibility": d["eligibility"], "status": "submitted", "attempt": 0,
        "agency_id": d["agency_id"], "service_id": None,
        "submitted_at": events.parse_time(d["submitted_at"]), "updated_at": now,
    }


def on_referral_submitted(session: Session, env: events.Envelope,
                          policy: Policy = DEFAULT_POLICY) -> None:
    """Remember the referral's de-identified facts and make the first decision."""
    d, now = env.data, _now()
    row = _referral_row(d, now)
    if not tables.insert_referral(session, row):
        log.info("referral already known", extra=logs.log_fields(referral_id=d["referral_id"]))
        return
    # just inserted (and so locked) by this transaction: routed from the facts in hand
    route(session, d["referral_id"], now, policy,
          inserted=SimpleNamespace(**row, offered_at=None))


def on_referrals_submitted(session: Session, envs: list[events.Envelope],
                           policy: Policy = DEFAULT_POLICY) -> None:
    """``on_referral_submitted`` for each of ``envs`` in turn, with the reads and writes of
    the run shared: the referrals stored in one statement, their candidates, load and tried
    services read in one (``_looked_up``), each decided in order (seeing the places the
    earlier ones chose), the chosen places reserved together (``decide.Held``: if another
    worker filled one meanwhile, the run is rolled back and the runner handles its events
    one at a time), then every decision recorded together (``decide.record_many``), each
    event with the correlation and causation the runner gives its submission alone."""
    rows = [_referral_row(env.data, _now()) for env in envs]
    stored = tables.insert_referrals(session, rows)
    new = []  # per submission: the first of a referral just stored (a second is known by then)
    for row in rows:
        new.append(row["referral_id"] in stored)
        stored.discard(row["referral_id"])
    found = _looked_up(session, [row for row, n in zip(rows, new, strict=True) if n], policy)
    made: list[Recorded] = []
    held = Held()
    for env, row, routed in zip(envs, rows, new, strict=True):
        rid = row["referral_id"]
        # as the runner wraps each event alone: logs, and the decision's event, name the
        # submission's correlation and the submission as cause
        with logs.correlation(env.correlation_id, env.id):
            if not routed:
                log.info("referral already known", extra=logs.log_fields(referral_id=rid))
                continue
            route(session, rid, row["updated_at"], policy,
                  inserted=SimpleNamespace(**row, offered_at=None), deferred=made,
                  held=held, found=found.get(rid))
    held.reserve(session)  # or, if another worker filled a chosen service: rolled back
    record_many(session, made)


def _looked_up(session: Session, rows: list[dict[str, Any]], policy: Policy
               ) -> dict[str, Found]:
    """The index's lookups for the referrals of a run, in one look (``lookup_many``): what
    ``route`` would look up for each in turn, nothing being written in between (the run's
    own places are counted by ``Held``, the referrals were stored before and their tried
    services are what the database holds). Referrals without a location are not looked up
    (``route`` does not decide them)."""
    if policy.index is None:
        return {}
    rows = [row for row in rows if row["geohash"] is not None]
    found = policy.index.lookup_many(session, [
        (row["need"], row["geohash"], (row["lat"], row["lon"]), row["referral_id"])
        for row in rows])
    return {row["referral_id"]: f for row, f in zip(rows, found, strict=True)}


class SubmittedHandler:
    """The consumer's handler of ``referral.submitted``: one event (``__call__``) or a run
    of consecutive ones in a consumer batch (``handle_many``, see the kit's
    ``BatchHandler``)."""

    def __init__(self, policy: Policy = DEFAULT_POLICY):
        self.policy = policy

    def __call__(self, session: Session, env: events.Envelope) -> None:
        on_referral_submitted(session, env, self.policy)

    def handle_many(self, session: Session, envs: list[events.Envelope]) -> None:
        on_referrals_submitted(session, envs, self.policy)


def on_status_changed(session: Session, env: events.Envelope,
                      policy: Policy = DEFAULT_POLICY) -> None:
    """Keep the offered service's load and answer history right, remember tried services,
    re-route when the referral is routable again, and offer a freed place to unmatched
    referrals."""
    d, now = env.data, _now()
    ref = tables.referral(session, d["referral_id"], lock=True)
    proposal = (tables.decision_by_event(session, d["proposal_id"])
                if d.get("proposal_id") else None)
    change = domain.load_change(d["from_status"], d["to_status"], d["reason_code"],
                                reserved=proposal is not None)
    service_id = _offer_service(d, proposal, None if ref is None else ref.service_id)
    if service_id is not None:
        tables.adjust_load(session, service_id, change.open_offers, change.active_cases, now)
        if change.mark_tried:
            tables.mark_tried(session, d["referral_id"], service_id, now)
        _remember_answer(session, d, ref, service_id, now)
    elif change.open_offers or change.active_cases:
        _no_service(env)
    if ref is not None:
        _follow_status(session, ref, d, now)
        if change.reevaluate:
            route(session, d["referral_id"], now, policy)
        elif d["to_status"] == "unmatched":
            # A service may have appeared between the exhausted decision and this answer.
            route(session, d["referral_id"], now, policy, only_if_placeable=True, retry=True)
    if service_id is not None and change.open_offers + change.active_cases < 0:
        _offer_freed_place(session, service_id, now, policy)


def _settles_alone(d: dict[str, Any]) -> bool:
    """Whether a status change does no more than add to its service's load (or leave it)
    and move the referral's mirrored status: no place freed (counters never go below 0, so
    decrements do not add up), no service tried, no answer recorded, nothing to decide.
    Such changes of a run can be applied together (``on_status_changes``). ``reserved``
    only makes an offer's increment 0 or 1, so the event alone says."""
    change = domain.load_change(d["from_status"], d["to_status"], d["reason_code"],
                                reserved=False)
    return (change.open_offers >= 0 and change.active_cases >= 0 and not change.mark_tried
            and not change.reevaluate and d["to_status"] != "unmatched"
            and not _is_answer(d))


def on_status_changes(session: Session, envs: list[events.Envelope],
                      policy: Policy = DEFAULT_POLICY) -> None:
    """``on_status_changed`` for each of ``envs`` in turn. Each stretch of consecutive
    changes that settle alone (``_settles_alone``: in the pipeline, every offer answering a
    proposal) is applied set-wise by ``_settle_together``; any other change (an answer, a
    decline, a freed place...) goes through ``on_status_changed`` in its place, after the
    stretch before it is written, so every effect keeps the events' order."""
    stretch: list[events.Envelope] = []
    for env in envs:
        if _settles_alone(env.data):
            stretch.append(env)
            continue
        _settle_together(session, stretch)
        stretch = []
        # as the runner wraps each event alone: a decision it makes names this change
        with logs.correlation(env.correlation_id, env.id):
            on_status_changed(session, env, policy)
    _settle_together(session, stretch)


def _settle_together(session: Session, envs: list[events.Envelope]) -> None:
    """Changes that settle alone, in order, in at most four statements: their referrals read
    and locked (in id order) in one, the decisions their proposals name in one, then each
    referral's last state in one and each service's summed increments in one. Several
    changes of one referral follow each other as they would one at a time: each starts from
    the state the previous one left."""
    if not envs:
        return
    refs = {r.referral_id: SimpleNamespace(**r._asdict(), status=None, updated_at=None)
            for r in tables.referral_offers(
                session, sorted({env.data["referral_id"] for env in envs}))}
    proposals = tables.decision_services(
        session, sorted({env.data["proposal_id"] for env in envs if env.data.get("proposal_id")}))
    loads: dict[str, tuple[int, int, datetime]] = {}
    for env in envs:
        d, now = env.data, _now()
        ref = refs.get(d["referral_id"])
        pid = d.get("proposal_id")
        proposal = SimpleNamespace(service_id=proposals[pid]) if pid in proposals else None
        change = domain.load_change(d["from_status"], d["to_status"], d["reason_code"],
                                    reserved=proposal is not None)
        service_id = _offer_service(d, proposal, None if ref is None else ref.service_id)
        if change.open_offers or change.active_cases:
            if service_id is None:
                _no_service(env)
            else:
                o, a, _ = loads.get(service_id, (0, 0, now))
                loads[service_id] = (o + change.open_offers, a + change.active_cases, now)
        if ref is not None:
            ref.service_id, ref.offered_at = _followed(ref.service_id, ref.offered_at, d)
            ref.status, ref.updated_at = d["to_status"], now
    tables.add_loads(session, [(sid, o, a, now) for sid, (o, a, now) in sorted(loads.items())])
    tables.follow_statuses(session, [r for _rid, r in sorted(refs.items())
                                     if r.status is not None])


class StatusChangedHandler:
    """The consumer's handler of ``referral.status_changed``: one event (``__call__``) or a
    run of consecutive ones in a consumer batch (``handle_many``, see the kit's
    ``BatchHandler``)."""

    def __init__(self, policy: Policy = DEFAULT_POLICY):
        self.policy = policy

    def __call__(self, session: Session, env: events.Envelope) -> None:
        on_status_changed(session, env, self.policy)

    def handle_many(self, session: Session, envs: list[events.Envelope]) -> None:
        on_status_changes(session, envs, self.policy)


def _no_service(env: events.Envelope) -> None:
    with logs.correlation(env.correlation_id, env.id):
        log.warning("status change names no service: load not adjusted", extra=logs.log_fields(
            referral_id=env.data["referral_id"], event_id=env.id))


def _offer_freed_place(session: Session, service_id: str, now: datetime,
                       policy: Policy) -> None:
    categories = directory.indexed_categories(session, service_id)
    if categories and directory.has_headroom(session, service_id):
        retry_unmatched(session, sorted(categories), now, policy, freed_service=service_id)


def _is_answer(d: dict[str, Any]) -> bool:
    """Acceptances, declines and expiries feed the service's acceptance rate and response
    time; withdrawals, voids and cancellations say nothing about the provider."""
    if d["from_status"] != "offered" or d["reason_code"] == "proposal_void":
        return False
    return (d["to_status"] == "accepted" or d["reason_code"] in DECLINES
            or d["reason_code"] == "expired")


def _remember_answer(session: Session, d: dict[str, Any], ref: Any, service_id: str,
                     now: datetime) -> None:
    if not _is_answer(d):
        return
    accepted = d["to_status"] == "accepted"
    offered_at = None if ref is None else ref.offered_at
    response_s = None
    if offered_at is not None:
        if offered_at.tzinfo is None:  # SQLite returns naive UTC
            offered_at = offered_at.replace(tzinfo=UTC)
        response_s = (events.parse_time(d["occurred_at"]) - offered_at).total_seconds()
    directory.record_answer(session, service_id, accepted=accepted, response_s=response_s,
                            now=now)


def on_referral_erased(session: Session, env: events.Envelope,
                       policy: Policy = DEFAULT_POLICY) -> None:
    """Purge what could point back to the resident: coarse location, facets, distances."""
    rid = env.data["referral_id"]
    session.execute(update(referral_view).where(referral_view.c.referral_id == rid).values(
        geohash=None, lat=None, lon=None, eligibility={}, updated_at=_now()))
    session.execute(update(decisions).where(decisions.c.referral_id == rid).values(reasons=[]))


def _offer_service(d: dict[str, Any], proposal: Any, last_service: str | None) -> str | None:
    """The service whose load a status change moves: the offer's, else the proposal's
    (``proposal``: the decision ``proposal_id`` names, if any), else the one the referral
    was last offered to."""
    if d.get("offer"):
        return str(d["offer"]["service_id"])
    if proposal is not None and proposal.service_id:
        return str(proposal.service_id)
    return last_service


def _followed(service_id: str | None, offered_at: datetime | None, d: dict[str, Any]
              ) -> tuple[str | None, datetime | None]:
    """The referral's service and offer time after the status change ``d``."""
    to_status = d["to_status"]
    if to_status == "offered" and d.get("offer") and d["reason_code"] != "proposal_void":
        return d["offer"]["service_id"], events.parse_time(d["occurred_at"])
    if to_status in ("submitted", "unmatched") or to_status in domain.TERMINAL:
        return None, None
    if to_status != "offered":
        return service_id, None
    return service_id, offered_at


def _follow_status(session: Session, ref: Any, d: dict[str, Any], now: datetime) -> None:
    service_id, offered_at = _followed(ref.service_id, ref.offered_at, d)
    session.execute(update(referral_view)
                    .where(referral_view.c.referral_id == ref.referral_id)
                    .values(status=d["to_status"], service_id=service_id,
                            offered_at=offered_at, updated_at=now))
