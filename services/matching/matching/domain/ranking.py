"""Scoring and ranking of the candidates that pass every hard constraint."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime

from .constraints import first_failure, nearest_km, speaks
from .model import (
    CONSTRAINTS,
    DEFAULT_WEIGHTS,
    Candidate,
    Decision,
    Ranked,
    Reason,
    Referral,
    Weights,
)


def score(referral: Referral, c: Candidate, weights: Weights = DEFAULT_WEIGHTS) -> Ranked:
    distance = nearest_km(c, referral)
    proximity = 0.0 if distance is None else 1.0 / (1.0 + distance / weights.distance_scale_km)
    free_share = c.headroom / c.capacity_max if c.capacity_max > 0 else 0.0
    language = referral.preferred_language
    lang_match = 1.0 if language and speaks(c, language) else 0.0
    total = (weights.distance * proximity + weights.headroom * free_share
             + weights.language * lang_match)
    reasons = [Reason("category", f"offers {referral.need.replace('_', ' ')}"),
               Reason("distance", "no location: distance unknown" if distance is None
                      else f"{distance:.1f} km from the resident's area"),
               Reason("headroom", f"{c.headroom} of {c.capacity_max} places free")]
    if language:
        reasons.append(Reason("language", f"speaks {language}" if lang_match
                              else f"does not list {language}"))
    if referral.urgency == "emergency":
        reasons.append(Reason("open_now", "open now"))
    return Ranked(candidate=c, score=round(total, 6), distance_km=distance,
                  reasons=tuple(reasons))


def evaluate(referral: Referral, candidates: Sequence[Candidate], now: datetime,
             weights: Weights = DEFAULT_WEIGHTS,
             pre_eliminated: Mapping[str, int] | None = None) -> Decision:
    """Apply the hard constraints, then rank what is left (best first).

    ``pre_eliminated`` adds counts of candidates already filtered out before the call
    (for example by category in a database query); they count as considered.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    eliminated = dict.fromkeys(CONSTRAINTS, 0)
    for code, count in (pre_eliminated or {}).items():
        eliminated[code] = eliminated.get(code, 0) + count
    excluded: list[tuple[str, str]] = []
    ranked: list[Ranked] = []
    for candidate in candidates:
        failed = first_failure(referral, candidate, now)
        if failed is None:
            ranked.append(score(referral, candidate, weights))
        else:
            eliminated[failed] += 1
            excluded.append((candidate.service_id, failed))
    ranked.sort(key=lambda item: (-item.score, item.candidate.service_id))
    considered = len(candidates) + sum((pre_eliminated or {}).values())
    return Decision(ranked=tuple(ranked), eliminated=eliminated, excluded=tuple(excluded),
                    considered=considered)


def as_full(candidate: Candidate) -> Candidate:
    """``candidate`` with its load at capacity (another worker took the last place)."""
    return replace(candidate, open_offers=max(candidate.open_offers,
                                              candidate.capacity_max - candidate.active_cases))
