"""Pure lifecycle rules."""
from __future__ import annotations

import pytest

from referral_intake import domain


@pytest.mark.parametrize("terminal", sorted(domain.TERMINAL))
def test_terminal_states_stay_terminal(terminal: str) -> None:
    for target in ("submitted", "offered", "accepted", "cancelled", "entered_in_error"):
        assert not domain.can_transition(terminal, target)


def test_offer_path_and_illegal_jump() -> None:
    assert domain.transition("submitted", "offered") == "offered"
    assert domain.transition("offered", "accepted") == "accepted"
    with pytest.raises(domain.IllegalTransition):
        domain.transition("submitted", "completed")


@pytest.mark.parametrize("status, updates, shown", [
    ("in_progress", "none", "submitted"),
    ("in_progress", "milestones", "connected"),
    ("completed", "milestones", "closed_connected"),
    ("failed", "milestones", "closed_not_connected"),
    ("offered", "milestones", "received"),
    ("on_hold", "full", "on_hold"),
])
def test_officer_sees_only_what_consent_allows(status: str, updates: str, shown: str) -> None:
    assert domain.status_for_referrer(status, updates) == shown


def test_short_ids_are_stable_and_unambiguous() -> None:
    rid = "6594c51a-6e08-4360-aa02-e6a9ed307f3e"
    assert domain.short_id(rid) == domain.short_id(rid)
    assert domain.short_id(rid).startswith("R-") and len(domain.short_id(rid)) == 8
    assert not set(domain.short_id(rid)[2:]) & set("01IO")
