"""Matching rules (DESIGN.md §7). Pure: no Flask, SQLAlchemy, Kafka, clock or env.

``evaluate`` drops every candidate that fails a hard constraint (see ``eligibility``; each
is counted under the FIRST constraint it fails, in ``CONSTRAINTS`` order), scores the rest
with ``Weights`` (see ``scoring``) and ranks them best first, ties broken by ``service_id``.
``load_change`` says how a referral status change moves the load of the service that held
the offer.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property, partial

from .eligibility import sift
from .scoring import DEFAULT_WEIGHTS, Factors, Weights, factors

__all__ = ["CONSTRAINTS", "DEFAULT_WEIGHTS", "Candidate", "Decision", "LoadChange",
           "OpeningHours", "Point", "Ranked", "Reason", "Referral", "Schedule", "Weights",
           "as_full", "evaluate", "exhaustion_reasons", "load_change", "score"]

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
    valid_from: str | None = None  # ISO date; before it the service does not operate
    valid_to: str | None = None  # ISO date (inclusive); after it the service does not operate


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
    answered: int = 0  # offers answered (accepted, declined or expired), from referral events
    accepted: int = 0
    mean_response_s: float | None = None  # mean seconds from offer to answer

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
class Reason:
    code: str
    text: str


@dataclass(frozen=True)
class Ranked:
    candidate: Candidate
    score: float
    distance_km: float | None
    # the reasons, written out when first read (only the best candidate's usually are)
    explain: Callable[[], tuple[Reason, ...]] = field(compare=False, repr=False)

    @cached_property
    def reasons(self) -> tuple[Reason, ...]:
        return self.explain()


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


# --- ranking ---------------------------------------------------------------------------------
def score(referral: Referral, c: Candidate, weights: Weights = DEFAULT_WEIGHTS,
          org_pending: int = 0) -> Ranked:
    """Score one eligible candidate and say why, in codes and words."""
    f = factors(referral, c, org_pending, weights)
    return Ranked(candidate=c, score=f.total(weights), distance_km=f.distance_km,
                  explain=partial(_reasons, referral, c, f, org_pending))


def _reasons(referral: Referral, c: Candidate, f: Factors, org_pending: int
             ) -> tuple[Reason, ...]:
    reasons = [Reason("category", f"offers {referral.need.replace('_', ' ')}"),
               Reason("distance", "no location: distance unknown" if f.distance_km is None
                      else f"{f.distance_km:.1f} km from the resident's area"),
               Reason("headroom", f"{c.headroom} of {c.capacity_max} places free")]
    if referral.preferred_language:
        language = referral.preferred_language
        reasons.append(Reason("language", f"speaks {language}" if f.language
                              else f"does not list {language}"))
    reasons.append(Reason("acceptance", "no answered offers yet" if not c.answered
                          else f"accepted {c.accepted} of {c.answered} answered offers"))
    if c.mean_response_s is not None:
        reasons.append(Reason("response",
                              f"answers in {c.mean_response_s / 3600:.1f} h on average"))
    if org_pending:
        reasons.append(Reason("spreading",
                              f"{org_pending} offer(s) of its organization await an answer"))
    if referral.urgency == "emergency":
        reasons.append(Reason("open_now", "open now"))
    return tuple(reasons)


def evaluate(referral: Referral, candidates: Sequence[Candidate], now: datetime,
             weights: Weights = DEFAULT_WEIGHTS,
             pre_eliminated: Mapping[str, int] | None = None) -> Decision:
    """Apply the hard constraints, then rank what is left (best first).

    ``pre_eliminated`` adds counts of candidates already filtered out before the call
    (for example by category in a database query); they count as considered.

    The same as ``first_failure`` and ``score`` per candidate (a test holds it to them),
    with the constraints checked by ``eligibility.sift`` and the distance its area check
    computed reused for the score.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    eliminated = dict.fromkeys(CONSTRAINTS, 0)
    for code, count in (pre_eliminated or {}).items():
        eliminated[code] = eliminated.get(code, 0) + count
    pending: dict[str, int] = {}
    for c in candidates:
        if c.open_offers:  # adding 0 would change no sum
            pending[c.organization_id] = pending.get(c.organization_id, 0) + c.open_offers
    fitting, excluded = sift(referral, candidates, now)
    for _, failed in excluded:
        eliminated[failed] += 1
    keyed = []
    for i, (candidate, distance) in enumerate(fitting):
        org_pending = pending.get(candidate.organization_id, 0)
        f = factors(referral, candidate, org_pending, weights, distance)
        total = f.total(weights)
        # best first, ties by service_id, then input order (as a stable sort by those two);
        # the index is unique, so a Ranked is never compared
        keyed.append((-total, candidate.service_id, i,
                      _ranked(candidate, total, f.distance_km,
                              partial(_reasons, referral, candidate, f, org_pending))))
    keyed.sort()
    considered = len(candidates) + sum((pre_eliminated or {}).values())
    return Decision(ranked=tuple(k[3] for k in keyed), eliminated=eliminated,
                    excluded=tuple(excluded), considered=considered)


def _ranked(candidate: Candidate, score: float, distance_km: float | None,
            explain: Callable[[], tuple[Reason, ...]]) -> Ranked:
    """``Ranked(...)`` without the frozen dataclass' ``__init__`` (a setattr per field):
    the same instance state, for every eligible candidate of every decision."""
    ranked = object.__new__(Ranked)
    object.__setattr__(ranked, "__dict__", {"candidate": candidate, "score": score,
                                            "distance_km": distance_km, "explain": explain})
    return ranked


def as_full(candidate: Candidate) -> Candidate:
    """``candidate`` with its load at capacity (another worker took the last place)."""
    return replace(candidate, open_offers=max(candidate.open_offers,
                                              candidate.capacity_max - candidate.active_cases))


# --- load accounting -------------------------------------------------------------------------
ACTIVE_CASE = frozenset({"accepted", "in_progress", "on_hold"})
TERMINAL = frozenset({"completed", "failed", "cancelled", "entered_in_error"})


@dataclass(frozen=True)
class LoadChange:
    open_offers: int = 0
    active_cases: int = 0
    mark_tried: bool = False  # never propose this service for this referral again
    reevaluate: bool = False  # the referral is routable again: make a new decision


def load_change(from_status: str | None, to_status: str, reason_code: str | None, *,
                reserved: bool) -> LoadChange:
    """How one ``referral.status_changed`` moves the load of the offer's service.

    ``reserved``: the offer answers one of matching's own proposals, whose place was
    reserved when it was proposed (a supervisor's manual assignment was not).
    Every proposal gets exactly one answer (DESIGN.md §3): an offer or a void.
    """
    routable = to_status in ("submitted", "unmatched")
    if reason_code == "proposal_void":
        # voided while still routable can only mean the service was tried already
        return LoadChange(open_offers=-1, mark_tried=routable,
                          reevaluate=to_status == "submitted")
    if from_status == "offered" and to_status == "accepted":
        return LoadChange(open_offers=-1, active_cases=1)
    if from_status == "offered" and to_status != "offered":
        return LoadChange(open_offers=-1, mark_tried=True, reevaluate=to_status == "submitted")
    if to_status == "offered" and from_status != "offered":
        return LoadChange(open_offers=0 if reserved else 1)
    if from_status in ACTIVE_CASE and to_status in TERMINAL:
        return LoadChange(active_cases=-1)
    if from_status == "unmatched" and to_status == "submitted":
        return LoadChange(reevaluate=True)
    return LoadChange()
