"""Soft preferences of matching (DESIGN.md §7): the score of an eligible candidate.

Pure, like ``domain`` (whose types it reads but never builds). Every factor lies in
[0, 1]; the score is their weighted sum, so with weights summing to 1 it lies in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from .eligibility import UNKNOWN, nearest_km, speaks

if TYPE_CHECKING:  # domain imports this module: no import cycle at runtime
    from .domain import Candidate, Referral


@dataclass(frozen=True)
class Weights:
    """How much each factor counts (defaults sum to 1; configured by ``MATCHING_WEIGHT_*``).

    * distance: proximity = 1 / (1 + km / distance_scale_km) to the nearest location
      (1 at the door, 0.5 at the scale; 0 without a location).
    * headroom: free places / capacity maximum.
    * language: 1 when the service speaks the resident's preferred language.
    * acceptance: historic acceptance rate with a Laplace prior, (accepted + 1) /
      (answered + 2): 0.5 for a service with no history, so newcomers are not punished.
    * response: 1 / (1 + mean answer hours / response_scale_h); 0.5 without history.
      Expired offers count as answers that took the whole offer lifetime.
    * spreading: 1 / (1 + offers awaiting an answer at the candidate's organization, among
      this referral's candidates), so one organization does not collect every offer
      while it is still answering the last ones.
    """

    distance: float = 0.40
    headroom: float = 0.20
    language: float = 0.10
    acceptance: float = 0.15
    response: float = 0.10
    spreading: float = 0.05
    distance_scale_km: float = 5.0
    response_scale_h: float = 4.0

    def __post_init__(self) -> None:
        factors = (self.distance, self.headroom, self.language, self.acceptance,
                   self.response, self.spreading)
        if any(w < 0 for w in factors) or sum(factors) <= 0:
            raise ValueError("weights must be non-negative and not all zero")
        if self.distance_scale_km <= 0 or self.response_scale_h <= 0:
            raise ValueError("scales must be positive")


DEFAULT_WEIGHTS = Weights()


class Factors(NamedTuple):
    """The factor values of one candidate (each in [0, 1]) and what they were made from
    (a named tuple: made for every eligible candidate of every decision, and a frozen
    dataclass costs several times more to build)."""

    distance_km: float | None
    proximity: float
    free_share: float
    language: float
    acceptance: float
    response: float
    spreading: float

    def total(self, w: Weights) -> float:
        return round(w.distance * self.proximity + w.headroom * self.free_share
                     + w.language * self.language + w.acceptance * self.acceptance
                     + w.response * self.response + w.spreading * self.spreading, 6)


def factors(referral: Referral, c: Candidate, org_pending: int, w: Weights,
            distance: object = UNKNOWN) -> Factors:
    """The factors of ``c``; ``distance``: ``eligibility.nearest_km(c, referral)`` when the
    caller has it already (``eligibility.sift`` does)."""
    if distance is UNKNOWN:
        distance = nearest_km(c, referral)
    language = referral.preferred_language
    mean_h = None if c.mean_response_s is None else c.mean_response_s / 3600
    capacity = c.capacity_max
    return Factors(  # positional, in field order (keywords cost a third more)
        distance,  # type: ignore[arg-type]
        0.0 if distance is None else 1.0 / (1.0 + distance / w.distance_scale_km),  # type: ignore[operator]
        max(0, capacity - (c.open_offers + c.active_cases)) / capacity if capacity > 0 else 0.0,
        1.0 if language and speaks(c, language) else 0.0,
        (c.accepted + 1) / (c.answered + 2),
        0.5 if mean_h is None else 1.0 / (1.0 + mean_h / w.response_scale_h),
        1.0 / (1.0 + org_pending),
    )
