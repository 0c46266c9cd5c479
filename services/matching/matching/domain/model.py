"""Matching's value objects: referral facts, candidates, weights, decisions. Pure."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

CONSTRAINTS = ("category", "inactive", "not_accepting", "at_capacity", "age", "gender",
               "population", "language", "out_of_area", "closed_now", "already_tried")
DESCRIPTIONS = {
    "category": "do not offer this need", "inactive": "are not active",
    "not_accepting": "are not accepting referrals", "at_capacity": "are full",
    "age": "do not serve this age", "gender": "do not serve this gender",
    "population": "serve only other populations",
    "language": "cannot serve the resident's language",
    "out_of_area": "do not cover the resident's area",
    "closed_now": "are closed now (emergency)", "already_tried": "were already tried",
}



@dataclass(frozen=True)
class Point:
    lat: float
    lon: float


@dataclass(frozen=True)
class OpeningHours:
    byday: str  # MO..SU
    opens_at: str  # HH:MM, local time
    closes_at: str  # HH:MM or 24:00; not after opens_at means "past midnight"


@dataclass(frozen=True)
class Schedule:
    always_open: bool = False
    timezone: str = "UTC"
    hours: tuple[OpeningHours, ...] = ()


@dataclass(frozen=True)
class Candidate:
    """One provider service as matching sees it: registry snapshot plus current load."""

    service_id: str
    organization_id: str
    categories: frozenset[str]
    status: str = "active"
    accepting: bool = True
    capacity_max: int = 1
    open_offers: int = 0
    active_cases: int = 0
    age_min: int | None = None
    age_max: int | None = None
    genders: frozenset[str] = frozenset()  # empty: no restriction
    populations: frozenset[str] = frozenset()  # empty: no restriction
    languages: frozenset[str] = frozenset()
    interpretation_available: bool = False
    locations: tuple[Point, ...] = ()
    radius_km: float | None = None
    area_geohashes: tuple[str, ...] = ()
    schedule: Schedule = Schedule(always_open=True)

    @property
    def load(self) -> int:
        return self.open_offers + self.active_cases

    @property
    def headroom(self) -> int:
        return max(0, self.capacity_max - self.load)


@dataclass(frozen=True)
class Referral:
    """The de-identified facts of a referral that matching may use."""

    referral_id: str
    need: str
    urgency: str
    lat: float
    lon: float
    geohash: str
    age: int | None = None
    age_band: str | None = None  # "18-24" or "65+", used when the age is not given
    gender: str | None = None
    preferred_language: str | None = None
    needs_interpreter: bool = False
    flags: frozenset[str] = frozenset()
    tried: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Weights:
    """Score = distance * proximity + headroom * free share + language * match.

    Each factor lies in [0, 1], so with the defaults a score lies in [0, 1]:
    proximity = 1 / (1 + km / distance_scale_km) (1 at the door, 0.5 at the scale, 0 when
    the service has no location); free share = free places / capacity; language match = 1
    when the service speaks the resident's preferred language.
    """

    distance: float = 0.6
    headroom: float = 0.3
    language: float = 0.1
    distance_scale_km: float = 5.0


DEFAULT_WEIGHTS = Weights()


@dataclass(frozen=True)
class Reason:
    code: str
    text: str


@dataclass(frozen=True)
class Ranked:
    candidate: Candidate
    score: float
    distance_km: float | None
    reasons: tuple[Reason, ...]


@dataclass(frozen=True)
class Decision:
    ranked: tuple[Ranked, ...]  # eligible candidates, best first
    eliminated: Mapping[str, int]  # constraint code -> candidates it removed
    excluded: tuple[tuple[str, str], ...]  # (service_id, constraint code)
    considered: int

    @property
    def best(self) -> Ranked | None:
        return self.ranked[0] if self.ranked else None

    @property
    def outcome(self) -> str:
        return "proposed" if self.ranked else "exhausted"

    @property
    def reasons(self) -> tuple[Reason, ...]:
        if self.best is not None:
            return self.best.reasons
        return exhaustion_reasons(self.eliminated, self.considered)



def exhaustion_reasons(eliminated: Mapping[str, int], considered: int) -> tuple[Reason, ...]:
    """Why nothing fits: one reason per constraint that removed candidates."""
    if considered == 0:
        return (Reason("no_services", "no services are known"),)
    return tuple(Reason(code, f"{n} service(s) {DESCRIPTIONS.get(code, code)}")
                 for code, n in eliminated.items() if n)
