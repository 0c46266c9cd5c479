"""Deadlines, short ids and what a referring officer may see of a status. Pure."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

_SHORT_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O, 1/I


@dataclass(frozen=True)
class OfferTtl:
    """A duration per urgency; ``business_days`` urgencies skip Saturdays and Sundays."""

    emergency: timedelta
    urgent: timedelta
    routine: timedelta
    business_days: frozenset[str] = frozenset()

    def expires_at(self, urgency: str, now: datetime) -> datetime:
        duration: timedelta = getattr(self, urgency)
        if urgency in self.business_days:
            return add_business_time(now, duration)
        return now + duration


def add_business_time(start: datetime, duration: timedelta) -> datetime:
    """``start`` plus ``duration`` counted on weekdays only (weekends do not run the clock)."""
    t, left = start, duration
    if t.weekday() >= 5:  # start counting on the next Monday at midnight
        t = (t + timedelta(days=7 - t.weekday())).replace(hour=0, minute=0, second=0,
                                                          microsecond=0)
    while left > timedelta(0):
        day_end = (t + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        step = min(left, day_end - t)
        t, left = t + step, left - step
        if left > timedelta(0) and t.weekday() >= 5:
            t += timedelta(days=7 - t.weekday())
    return t


def short_id(referral_uuid_hex: str, length: int = 6) -> str:
    """A human-friendly id (``R-7F3KQ2``) for notifications and phone calls.

    Its characters come from the uuid's first 32 bits, all random in a uuid4 (digits 9 to 16
    include the fixed version digit: 6 characters held only 26 random bits, and a few
    thousand referrals already shared one). Not unique by construction: the submission
    draws another id on the rare clash with the unique column.
    """
    n = int(referral_uuid_hex.replace("-", "")[:8], 16)
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
