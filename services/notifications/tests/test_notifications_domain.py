"""Unit tests of notifications.domain: recipients, consent, id-only text. Pure, no I/O."""
from __future__ import annotations

import dataclasses
import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest
from notifications_fixtures import (
    AGENCY,
    CANARY,
    OFFICER_REF,
    ORG,
    offer,
    sla_breached,
    status_changed,
    submitted,
)

from notifications import domain
from servicekit import events

STATUS = events.REFERRAL_STATUS_CHANGED


def _for(recipient_kind: str, drafts: list[domain.Draft]) -> list[domain.Draft]:
    return [d for d in drafts if d.recipient_kind == recipient_kind]


def test_offer_notifies_the_provider_organization_with_short_id_need_urgency_and_deadline(
) -> None:
    data = status_changed(to_status="offered", offer_=offer(), referrer_updates="none")
    drafts = domain.notifications_for(STATUS, data)
    assert len(drafts) == 1
    d = drafts[0]
    assert (d.recipient_kind, d.recipient_id, d.kind, d.channel) == (
        "org", ORG, "offer_made", "in_app")
    assert d.body == ("New urgent housing referral R-7F3K offered to your organization — "
                      "respond by 14:30 UTC")
    assert d.link == f"/referrals/{data['referral_id']}"
    assert d.short_id == "R-7F3K" and d.referral_id == data["referral_id"]


def test_deadline_on_another_day_carries_its_date() -> None:
    data = status_changed(offer_=offer(expires_at="2026-03-04T09:00:00Z"),
                          referrer_updates="none")
    (d,) = domain.notifications_for(STATUS, data)
    assert d.body.endswith("respond by 2026-03-04 09:00 UTC")


def test_voided_proposal_notifies_nobody() -> None:
    data = status_changed(from_status="offered", to_status="offered",
                          offer_=offer(status="withdrawn"), reason_code="proposal_void",
                          referrer_updates="full")
    assert domain.notifications_for(STATUS, data) == []


def test_withdrawn_offer_tells_the_organization() -> None:
    data = status_changed(from_status="offered", to_status="submitted",
                          offer_=offer(status="withdrawn"), reason_code="consent_revoked")
    (d,) = _for("org", domain.notifications_for(STATUS, data))
    assert (d.recipient_id, d.kind) == (ORG, "offer_withdrawn")


def test_cancellation_of_an_offered_referral_is_one_cancel_notice_for_the_org() -> None:
    data = status_changed(from_status="offered", to_status="cancelled",
                          offer_=offer(status="withdrawn"), reason_code="cancelled_by_officer",
                          referrer_updates="none")
    drafts = domain.notifications_for(STATUS, data)
    assert [(d.recipient_kind, d.kind) for d in drafts] == [("org", "referral_cancelled")]


def test_declined_offer_does_not_notify_the_declining_org() -> None:
    data = status_changed(from_status="offered", to_status="submitted",
                          offer_=offer(status="declined"), reason_code="no_capacity")
    assert _for("org", domain.notifications_for(STATUS, data)) == []


def test_unmatched_goes_to_the_agency_supervisors() -> None:
    data = status_changed(from_status="submitted", to_status="unmatched",
                          referrer_updates="none")
    (d,) = domain.notifications_for(STATUS, data)
    assert (d.recipient_kind, d.recipient_id, d.kind) == ("agency_supervisors", AGENCY,
                                                          "unmatched")


def test_sla_breach_goes_to_the_agency_supervisors() -> None:
    (d,) = domain.notifications_for(events.REFERRAL_SLA_BREACHED, sla_breached())
    assert (d.recipient_kind, d.recipient_id, d.kind) == ("agency_supervisors", AGENCY,
                                                          "sla_breached")
    assert "R-5T6Y" in d.body and "2026-03-01 09:15 UTC" in d.body


@pytest.mark.parametrize(("updates", "expected"), [
    ("none", []),
    ("milestones", ["Your urgent housing referral R-7F3K: connected with a service"]),
    ("full", ["Your urgent housing referral R-7F3K: now accepted"]),
])
def test_officer_hears_of_acceptance_only_as_consent_allows(updates: str,
                                                            expected: list[str]) -> None:
    data = status_changed(from_status="offered", to_status="accepted",
                          offer_=offer(status="accepted"), referrer_updates=updates)
    officer = _for("user", domain.notifications_for(STATUS, data))
    assert [d.body for d in officer] == expected
    assert all(d.recipient_id == OFFICER_REF for d in officer)


@pytest.mark.parametrize(("before", "after", "milestones", "full"), [
    ("submitted", "offered", None, "now offered"),
    ("accepted", "in_progress", None, "now in progress"),
    ("in_progress", "completed", "closed — connected", "now completed"),
    ("in_progress", "failed", "closed — not connected", "now failed"),
])
def test_milestones_hide_status_names_that_full_updates_show(
        before: str, after: str, milestones: str | None, full: str) -> None:
    def officer_titles(updates: str) -> list[str]:
        data = status_changed(from_status=before, to_status=after, referrer_updates=updates)
        return [d.title for d in _for("user", domain.notifications_for(STATUS, data))]

    assert officer_titles("milestones") == ([] if milestones is None
                                            else [f"Referral R-7F3K: {milestones}"])
    assert officer_titles("full") == [f"Referral R-7F3K: {full}"]


def test_submission_is_a_received_milestone_unless_updates_are_none() -> None:
    (d,) = domain.notifications_for(events.REFERRAL_SUBMITTED, submitted("milestones"))
    assert (d.recipient_kind, d.recipient_id, d.title) == ("user", OFFICER_REF,
                                                           "Referral R-9Q2W: received")
    assert domain.notifications_for(events.REFERRAL_SUBMITTED, submitted("none")) == []


def test_events_that_notify_nobody_give_no_drafts() -> None:
    assert domain.notifications_for(events.ROUTING_PROPOSED, {"referral_id": "x"}) == []


def test_drafts_hold_only_whitelisted_fields() -> None:
    allowed = {"recipient_kind", "recipient_id", "kind", "referral_id", "short_id", "title",
               "body", "link", "channel"}
    assert {f.name for f in dataclasses.fields(domain.Draft)} == allowed
    assert {f.name for f in dataclasses.fields(domain.Facts)} == {
        "referral_id", "short_id", "need", "urgency"}


def _every_status_change() -> list[dict[str, object]]:
    cases = []
    statuses = [None, *events.STATUSES]
    for before, after, updates, offer_status in itertools.product(
            statuses, events.STATUSES, events.REFERRER_UPDATES, [None, *events.OFFER_STATUSES]):
        cases.append(status_changed(
            from_status=before, to_status=after, referrer_updates=updates,
            offer_=None if offer_status is None else offer(status=offer_status)))
    return cases


def test_no_identifier_other_than_the_referral_reaches_any_text() -> None:
    """Agency, officer pseudonym, organization, service, offer and proposal ids carry a
    canary; across every status change, consent level and offer state none may leak."""
    drafts = [d for data in _every_status_change()
              for d in domain.notifications_for(STATUS, data, refusals=3)]
    drafts += domain.notifications_for(events.REFERRAL_SUBMITTED, submitted("full"))
    facts = domain.facts_of(status_changed())
    drafts.append(domain.reminder_draft(facts, ORG, "2026-03-02T14:30:00Z", "2026-03-02T14:20:00Z"))
    drafts += domain.notifications_for(events.REFERRAL_SLA_BREACHED, sla_breached("first_contact"))
    assert len(drafts) > 100  # the sweep really produced notifications
    assert {d.kind for d in drafts} == set(domain.KINDS)
    for d in drafts:
        assert CANARY not in d.title + d.body + d.link, d
        assert d.recipient_kind in domain.RECIPIENT_KINDS
        assert d.link == f"/referrals/{d.referral_id}"


def test_reminder_falls_when_three_quarters_of_the_response_window_have_passed() -> None:
    offered = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
    assert domain.reminder_at(offered, offered + timedelta(hours=4)) == offered + timedelta(
        hours=3)
    facts = domain.facts_of(status_changed())
    draft = domain.reminder_draft(facts, ORG, "2026-03-02T18:00:00Z", "2026-03-02T17:00:00Z")
    assert (draft.recipient_kind, draft.recipient_id, draft.kind) == ("org", ORG,
                                                                      "offer_reminder")
    assert "18:00 UTC" in draft.body and "R-7F3K" in draft.title


@pytest.mark.parametrize("refusals, alerted", [(1, False), (2, False), (3, True), (4, False)])
def test_only_the_third_decline_or_expiry_alerts_the_agency_supervisors(
        refusals: int, alerted: bool) -> None:
    data = status_changed(from_status="offered", to_status="submitted",
                          offer_=offer(status="declined"), reason_code="no_capacity",
                          referrer_updates="none")
    drafts = domain.notifications_for(STATUS, data, refusals=refusals)
    sup = [d for d in drafts if d.kind == "repeated_refusals"]
    assert bool(sup) is alerted
    if alerted:
        assert (sup[0].recipient_kind, sup[0].recipient_id) == ("agency_supervisors", AGENCY)
    accepted = status_changed(from_status="offered", to_status="accepted",
                              offer_=offer(status="accepted"), referrer_updates="none")
    assert domain.notifications_for(STATUS, accepted, refusals=3) == []  # not a refusal


def test_provider_offers_reach_the_feed_whatever_the_preferences() -> None:
    assert domain.reaches_in_app("offer_made", "org", ["email"])
    assert domain.reaches_in_app("offer_reminder", "org", [])
    assert not domain.reaches_in_app("offer_withdrawn", "org", ["email"])
    assert not domain.reaches_in_app("unmatched", "agency_supervisors", ["email"])
    assert domain.reaches_in_app("milestone", "user", None)  # no preferences: everything


def test_retry_delays_grow_exponentially_with_bounded_jitter_and_a_cap() -> None:
    rand = random.Random(7)
    for attempt in range(1, 8):
        step = min(60.0, 2.0 * 2 ** (attempt - 1))
        delays = {domain.retry_delay(attempt, 2.0, 60.0, rand).total_seconds()
                  for _ in range(50)}
        assert all(step / 2 <= d <= step for d in delays), (attempt, delays)
        assert len(delays) > 1  # jittered, not a fixed schedule
