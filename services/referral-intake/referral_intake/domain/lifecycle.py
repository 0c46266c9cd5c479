"""Referral lifecycle rules (DESIGN.md §4). Pure: no Flask, SQLAlchemy, Kafka, clock or env.

``decide(referral, command)`` is the one place that changes a referral's status or an
offer's status. It returns the new state and the changes to record (timeline rows and
``referral.status_changed`` events), or raises a :class:`DomainError` and changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from .commands import (
    Accept,
    Assign,
    Cancel,
    Close,
    Command,
    Decline,
    EnterInError,
    Exhaust,
    Expire,
    Progress,
    Propose,
    Reroute,
    RevokeSharing,
)

TERMINAL = frozenset({"completed", "failed", "cancelled", "entered_in_error"})
ACTIVE_CASE = frozenset({"accepted", "in_progress", "on_hold"})
ROUTABLE = frozenset({"submitted", "unmatched"})
DECLINE_REASONS = ("no_capacity", "not_eligible", "out_of_area", "language", "unable_to_serve",
                   "duplicate", "other")
OUTCOMES = ("connected", "enrolled", "resident_declined", "unable_to_contact", "ineligible",
            "no_show", "moved", "other")

TRANSITIONS: dict[str, frozenset[str]] = {
    "submitted": frozenset({"offered", "unmatched"}),
    "offered": frozenset({"accepted", "submitted"}),
    "unmatched": frozenset({"offered", "submitted"}),
    "accepted": frozenset({"in_progress", "on_hold", "completed", "failed"}),
    "in_progress": frozenset({"on_hold", "completed", "failed"}),
    "on_hold": frozenset({"in_progress", "completed", "failed"}),
}

class DomainError(Exception):
    """A command the current state refuses; nothing was changed."""


class IllegalTransition(DomainError):
    def __init__(self, current: str, target: str):
        super().__init__(f"cannot move a referral from {current} to {target}")
        self.current, self.target = current, target


class OfferNotOpen(DomainError):
    """The caller's offer exists but can no longer be answered (expired, withdrawn, ...)."""

    def __init__(self, offer_status: str, current: str):
        super().__init__(f"the offer is {offer_status}")
        self.offer_status, self.current = offer_status, current


class NoOffer(DomainError):
    """The caller's organization holds no offer for this referral (answered as 404)."""


class AlreadyTried(DomainError):
    def __init__(self, current: str):
        super().__init__("this service was already offered this referral")
        self.current = current


def can_transition(current: str, target: str) -> bool:
    if current in TERMINAL:
        return False
    if target in ("entered_in_error", "cancelled"):
        return True
    return target in TRANSITIONS.get(current, frozenset())


def transition(current: str, target: str) -> str:
    if not can_transition(current, target):
        raise IllegalTransition(current, target)
    return target


@dataclass(frozen=True)
class Offer:
    id: str
    service_id: str
    organization_id: str
    attempt: int
    status: str  # open | accepted | declined | expired | withdrawn
    expires_at: datetime
    reason_code: str | None = None


@dataclass(frozen=True)
class Referral:
    status: str
    offers: tuple[Offer, ...] = ()

    @property
    def open_offer(self) -> Offer | None:
        return next((o for o in self.offers if o.status == "open"), None)

    @property
    def accepted_offer(self) -> Offer | None:
        return next((o for o in self.offers if o.status == "accepted"), None)

    def offer_of(self, org: str) -> Offer | None:
        """The organization's latest offer (open or accepted first)."""
        mine = [o for o in self.offers if o.organization_id == org]
        live = [o for o in mine if o.status in ("open", "accepted")]
        found = live or mine
        return found[-1] if found else None

    def tried(self, service_id: str) -> bool:
        return any(o.service_id == service_id for o in self.offers)

    def _with_offer(self, offer: Offer) -> tuple[Offer, ...]:
        others = tuple(o for o in self.offers if o.id != offer.id)
        return others + (offer,) if len(others) == len(self.offers) else tuple(
            offer if o.id == offer.id else o for o in self.offers)


@dataclass(frozen=True)
class Change:
    """One recorded step: a timeline row and one ``referral.status_changed`` event."""

    from_status: str
    to_status: str
    actor_role: str
    offer: Offer | None = None
    reason_code: str | None = None
    outcome_code: str | None = None
    void: bool = False  # a routing proposal answered without an offer


Decision = tuple[Referral, list[Change]]


def decide(ref: Referral, cmd: Command) -> Decision:
    """Apply ``cmd`` to ``ref``: the new state and what to record, or a DomainError."""
    handler: Any = _HANDLERS[type(cmd)]
    decision: Decision = handler(ref, cmd)
    return decision


def _withdraw_open(ref: Referral, reason: str, actor: str, target: str) -> Decision:
    """Close the open offer (if any) and move the referral to ``target``."""
    offer = ref.open_offer
    status = transition(ref.status, target) if target != ref.status else ref.status
    if offer is None:
        return replace(ref, status=status), [Change(ref.status, status, actor, None, reason)]
    closed = replace(offer, status="withdrawn", reason_code=reason)
    return (Referral(status, ref._with_offer(closed)),
            [Change(ref.status, status, actor, closed, reason)])


def _propose(ref: Referral, c: Propose) -> Decision:
    offer = Offer(c.offer_id, c.service_id, c.organization_id, c.attempt, "open", c.expires_at)
    if ref.status not in ROUTABLE or ref.tried(c.service_id):
        void = replace(offer, status="withdrawn", reason_code="proposal_void")
        return ref, [Change(ref.status, ref.status, "system", void, "proposal_void", void=True)]
    status = transition(ref.status, "offered")
    return (Referral(status, ref.offers + (offer,)),
            [Change(ref.status, status, "system", offer)])


def _exhaust(ref: Referral, _: Exhaust) -> Decision:
    if ref.status != "submitted":
        return ref, []  # placed, closed or already unmatched: nothing to record
    return replace(ref, status="unmatched"), [Change("submitted", "unmatched", "system")]


def _answerable(ref: Referral, org: str, now: datetime) -> Offer:
    offer = ref.offer_of(org)
    if offer is None:
        raise NoOffer(org)
    if offer.status == "open" and offer.expires_at <= now:
        raise OfferNotOpen("expired", ref.status)
    if offer.status != "open":
        raise OfferNotOpen(offer.status, ref.status)
    return offer


def _accept(ref: Referral, c: Accept) -> Decision:
    offer = replace(_answerable(ref, c.org, c.now), status="accepted")
    status = transition(ref.status, "accepted")
    return Referral(status, ref._with_offer(offer)), [Change(ref.status, status, "provider", offer)]


def _decline(ref: Referral, c: Decline) -> Decision:
    if c.reason not in DECLINE_REASONS:
        raise ValueError("unknown decline reason")
    offer = replace(_answerable(ref, c.org, c.now), status="declined", reason_code=c.reason)
    status = transition(ref.status, "submitted")
    return (Referral(status, ref._with_offer(offer)),
            [Change(ref.status, status, "provider", offer, c.reason)])


def _expire(ref: Referral, c: Expire) -> Decision:
    offer = ref.open_offer
    if offer is None or offer.expires_at > c.now:
        return ref, []
    closed = replace(offer, status="expired", reason_code="expired")
    status = transition(ref.status, "submitted")
    return (Referral(status, ref._with_offer(closed)),
            [Change(ref.status, status, "system", closed, "expired")])


def _case_offer(ref: Referral, org: str, target: str) -> Offer:
    """The accepted offer the organization works the case under."""
    if ref.offer_of(org) is None:
        raise NoOffer(org)
    if ref.status not in ACTIVE_CASE:
        raise IllegalTransition(ref.status, target)
    offer = ref.accepted_offer
    if offer is None or offer.organization_id != org:
        raise NoOffer(org)
    return offer


def _progress(ref: Referral, c: Progress) -> Decision:
    if c.status not in ("in_progress", "on_hold"):
        raise ValueError("progress status must be in_progress or on_hold")
    offer = _case_offer(ref, c.org, c.status)
    status = transition(ref.status, c.status)
    return replace(ref, status=status), [Change(ref.status, status, "provider", offer)]


def _close(ref: Referral, c: Close) -> Decision:
    if c.outcome not in ("completed", "failed") or c.outcome_code not in OUTCOMES:
        raise ValueError("unknown outcome")
    offer = _case_offer(ref, c.org, c.outcome)
    status = transition(ref.status, c.outcome)
    return (replace(ref, status=status),
            [Change(ref.status, status, "provider", offer, outcome_code=c.outcome_code)])


def _cancel(ref: Referral, c: Cancel) -> Decision:
    transition(ref.status, "cancelled")
    decided, changes = _withdraw_open(ref, f"cancelled_by_{c.actor_role}", c.actor_role,
                                      "cancelled")
    if changes[0].offer is None and ref.accepted_offer is not None:  # report whose case ended
        changes = [replace(changes[0], offer=ref.accepted_offer)]
    return decided, changes


def _enter_in_error(ref: Referral, _: EnterInError) -> Decision:
    transition(ref.status, "entered_in_error")
    decided, changes = _withdraw_open(ref, "withdrawn", "supervisor", "entered_in_error")
    if changes[0].offer is None and ref.accepted_offer is not None:
        changes = [replace(changes[0], offer=ref.accepted_offer)]
    return decided, changes


def _reroute(ref: Referral, _: Reroute) -> Decision:
    if ref.status not in ROUTABLE | {"offered"}:
        raise IllegalTransition(ref.status, "submitted")
    return _withdraw_open(ref, "rerouted", "supervisor", "submitted")


def _assign(ref: Referral, c: Assign) -> Decision:
    if ref.status not in ROUTABLE | {"offered"}:
        raise IllegalTransition(ref.status, "offered")
    if ref.tried(c.service_id):
        raise AlreadyTried(ref.status)
    changes: list[Change] = []
    if ref.status == "offered":
        ref, changes = _withdraw_open(ref, "rerouted", "supervisor", "submitted")
    offer = Offer(c.offer_id, c.service_id, c.organization_id, c.attempt, "open", c.expires_at)
    status = transition(ref.status, "offered")
    return (Referral(status, ref.offers + (offer,)),
            changes + [Change(ref.status, status, "supervisor", offer)])


def _revoke_sharing(ref: Referral, _: RevokeSharing) -> Decision:
    if ref.open_offer is None:
        return ref, []
    return _withdraw_open(ref, "consent_revoked", "system", "submitted")


_HANDLERS = {Propose: _propose, Exhaust: _exhaust, Accept: _accept, Decline: _decline,
             Expire: _expire, Progress: _progress, Close: _close, Cancel: _cancel,
             EnterInError: _enter_in_error, Reroute: _reroute, Assign: _assign,
             RevokeSharing: _revoke_sharing}


