"""Referral lifecycle rules (DESIGN.md §4). Pure: no Flask, SQLAlchemy, Kafka, clock or env.

``decide(referral, command)`` (lifecycle.py) is the one place that changes a referral's or
an offer's status; commands.py lists the commands, timing.py deadlines and officer views.
"""
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
from .lifecycle import (
    ACTIVE_CASE,
    DECLINE_REASONS,
    OUTCOMES,
    ROUTABLE,
    TERMINAL,
    TRANSITIONS,
    AlreadyTried,
    Change,
    Decision,
    DomainError,
    IllegalTransition,
    NoOffer,
    Offer,
    OfferNotOpen,
    Referral,
    can_transition,
    decide,
    transition,
)
from .timing import OfferTtl, add_business_time, short_id, status_for_referrer

__all__ = [
    "ACTIVE_CASE", "DECLINE_REASONS", "OUTCOMES", "ROUTABLE", "TERMINAL", "TRANSITIONS",
    "Accept", "AlreadyTried", "Assign", "Cancel", "Change", "Close", "Command", "Decision",
    "Decline", "DomainError", "EnterInError", "Exhaust", "Expire", "IllegalTransition",
    "NoOffer", "Offer", "OfferNotOpen", "OfferTtl", "Progress", "Propose", "Referral",
    "Reroute", "RevokeSharing", "add_business_time", "can_transition", "decide", "short_id",
    "status_for_referrer", "transition",
]
