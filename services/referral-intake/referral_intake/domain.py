"""Referral lifecycle rules (DESIGN.md §4). Pure: no Flask, SQLAlchemy, Kafka, clock or env."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

TERMINAL = frozenset({"completed", "failed", "cancelled", "entered_in_error"})
ACTIVE_CASE = frozenset({"accepted", "in_progress", "on_hold"})

TRANSITIONS: dict[str, frozenset[str]] = {
    "submitted": frozenset({"offered", "unmatched"}),
    "offered": frozenset({"accepted", "submitted"}),
    "unmatched": frozenset({"offered", "submitted"}),
    "accepted": frozenset({"in_progress", "on_hold", "completed", "failed"}),
    "in_progress": frozenset({"on_hold", "completed", "failed"}),
    "on_hold": frozenset({"in_progress", "completed", "failed"}),
}

_SHORT_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O, 1/I


class IllegalTransition(Exception):
    def __init__(self, current: str, target: str):
        super().__init__(f"cannot move a referral from {current} to {target}")
        self.current, self.target = current, target


def can_transition(current: str, target: str) -> bool:
    if current in TERMINAL:
        return False
    if target == "entered_in_error":
        return True
    if target == "cancelled":
        return True
    return target in TRANSITIONS.get(current, frozenset())


def transition(current: str, target: str) -> str:
    if not can_transition(current, target):
        raise IllegalTransition(current, target)
    return target


@dataclass(frozen=True)
class OfferTtl:
    emergency: timedelta
    urgent: timedelta
    routine: timedelta

    def expires_at(self, urgency: str, now: datetime) -> datetime:
        return now + getattr(self, urgency)


def short_id(referral_uuid_hex: str, length: int = 6) -> str:
    """A human-friendly id (``R-7F3KQ2``) for notifications and phone calls."""
    n = int(referral_uuid_hex.replace("-", "")[:16], 16)
    chars = []
    for _ in range(length):
        n, r = divmod(n, len(_SHORT_ALPHABET))
        chars.append(_SHORT_ALPHABET[r])
    return "R-" + "".join(chars)


def status_for_referrer(status: str, referrer_updates: str) -> str:
    """What the referring officer may see of a status under the resident's consent."""
    if referrer_updates == "full":
        return status
    if referrer_updates == "none":
        return "submitted"
    if status in ("accepted", "in_progress", "on_hold"):
        return "connected"
    if status == "completed":
        return "closed_connected"
    if status in ("failed", "cancelled", "entered_in_error"):
        return "closed_not_connected"
    return "received"
