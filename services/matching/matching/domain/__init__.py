"""Matching rules (DESIGN.md §7). Pure: no Flask, SQLAlchemy, Kafka, clock or env.

``evaluate`` drops every candidate that fails a hard constraint (each counted under the
FIRST constraint it fails, in ``CONSTRAINTS`` order), scores the rest with ``Weights`` and
ranks them best first, ties broken by ``service_id``. ``load_change`` says how a referral
status change moves the load of the service that held the offer.
"""
from .constraints import CHECKS, first_failure, in_area, is_open, nearest_km, speaks
from .load import ACTIVE_CASE, TERMINAL, LoadChange, load_change
from .model import (
    CONSTRAINTS,
    DEFAULT_WEIGHTS,
    DESCRIPTIONS,
    Candidate,
    Decision,
    OpeningHours,
    Point,
    Ranked,
    Reason,
    Referral,
    Schedule,
    Weights,
    exhaustion_reasons,
)
from .ranking import as_full, evaluate, score

__all__ = [
    "ACTIVE_CASE", "CHECKS", "CONSTRAINTS", "DEFAULT_WEIGHTS", "DESCRIPTIONS", "TERMINAL",
    "Candidate", "Decision", "LoadChange", "OpeningHours", "Point", "Ranked", "Reason",
    "Referral", "Schedule", "Weights", "as_full", "evaluate", "exhaustion_reasons",
    "first_failure", "in_area", "is_open", "load_change", "nearest_km", "score", "speaks",
]
