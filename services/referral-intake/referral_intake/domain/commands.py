"""Commands the lifecycle accepts (frozen dataclasses; imperative names)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Propose:
    offer_id: str
    service_id: str
    organization_id: str
    attempt: int
    expires_at: datetime


@dataclass(frozen=True)
class Exhaust:
    pass


@dataclass(frozen=True)
class Accept:
    org: str
    now: datetime


@dataclass(frozen=True)
class Decline:
    org: str
    reason: str
    now: datetime


@dataclass(frozen=True)
class Expire:
    now: datetime


@dataclass(frozen=True)
class Progress:
    org: str
    status: str  # in_progress | on_hold


@dataclass(frozen=True)
class Close:
    org: str
    outcome: str  # completed | failed
    outcome_code: str


@dataclass(frozen=True)
class Cancel:
    actor_role: str  # officer | supervisor


@dataclass(frozen=True)
class EnterInError:
    pass


@dataclass(frozen=True)
class Reroute:
    pass


@dataclass(frozen=True)
class Assign:
    offer_id: str
    service_id: str
    organization_id: str
    attempt: int
    expires_at: datetime


@dataclass(frozen=True)
class RevokeSharing:
    pass




Command = (Propose | Exhaust | Accept | Decline | Expire | Progress | Close | Cancel
           | EnterInError | Reroute | Assign | RevokeSharing)
