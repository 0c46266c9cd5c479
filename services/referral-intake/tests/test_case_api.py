"""Provider and officer actions through the HTTP API, and the events they emit."""
from __future__ import annotations

import uuid

import pytest
from intake_testkit import CANARY, Intake

from servicekit import events

pytestmark = pytest.mark.integration


def _status_events(intake: Intake) -> list[tuple[str | None, str, str | None]]:
    return [(e.data["from_status"], e.data["to_status"], e.data["reason_code"])
            for e in intake.events(events.REFERRAL_STATUS_CHANGED)]


def test_provider_accepts_progresses_and_closes_with_events_for_matching(intake: Intake) -> None:
    rid, service, org = intake.offered()
    p = intake.provider(org)
    accepted = intake.post(f"/v1/referrals/{rid}/accept", p)
    assert accepted.status_code == 200 and accepted.get_json()["status"] == "accepted"
    assert "contact" not in accepted.get_json()  # command answers never carry PII
    assert intake.post(f"/v1/referrals/{rid}/progress", p,
                       {"status": "in_progress", "note": "called, left message"}
                       ).status_code == 200
    assert intake.post(f"/v1/referrals/{rid}/progress", p, {"status": "on_hold"}
                       ).status_code == 200
    closed = intake.post(f"/v1/referrals/{rid}/close", p,
                         {"outcome": "completed", "outcome_code": "enrolled"})
    assert closed.status_code == 200 and closed.get_json()["status"] == "completed"
    assert _status_events(intake) == [("submitted", "offered", None),
                                          ("offered", "accepted", None),
                                          ("accepted", "in_progress", None),
                                          ("in_progress", "on_hold", None),
                                          ("on_hold", "completed", None)]
    last = intake.events(events.REFERRAL_STATUS_CHANGED)[-1].data
    assert last["outcome_code"] == "enrolled" and last["offer"]["service_id"] == service
    assert last["offer"]["organization_id"] == org and last["actor_role"] == "provider"
    note = intake.sql("SELECT note_ct FROM timeline WHERE note_ct IS NOT NULL")
    assert len(note) == 1 and "left message" not in note[0][0]
    row = intake.sql("SELECT accepted_at, first_contact_at, closed_at FROM referrals")[0]
    assert all(row)


def test_illegal_transitions_are_409_with_the_current_status(intake: Intake) -> None:
    rid, _, org = intake.offered()
    p = intake.provider(org)
    early = intake.post(f"/v1/referrals/{rid}/close", p,
                        {"outcome": "completed", "outcome_code": "connected"})
    assert early.status_code == 409 and early.mimetype == "application/problem+json"
    assert early.get_json()["current_status"] == "offered"
    intake.post(f"/v1/referrals/{rid}/accept", p)
    again = intake.post(f"/v1/referrals/{rid}/accept", p)
    assert again.status_code == 409 and again.get_json()["current_status"] == "accepted"
    intake.post(f"/v1/referrals/{rid}/progress", p, {"status": "in_progress"})
    same = intake.post(f"/v1/referrals/{rid}/progress", p, {"status": "in_progress"})
    assert same.status_code == 409 and same.get_json()["current_status"] == "in_progress"
    assert CANARY["family_name"] not in same.get_data(as_text=True)


def test_accepting_an_expired_offer_is_409_and_changes_nothing(intake: Intake) -> None:
    rid, _, org = intake.offered()
    intake.sql("UPDATE offers SET expires_at = now() - interval '1 minute'")
    before = len(intake.events())
    resp = intake.post(f"/v1/referrals/{rid}/accept", intake.provider(org))
    assert resp.status_code == 409 and "expired" in resp.get_json()["detail"]
    assert resp.get_json()["current_status"] == "offered"
    assert len(intake.events()) == before
    assert intake.sql("SELECT status FROM offers")[0][0] == "open"  # the timer expires it


def test_accepting_a_withdrawn_offer_is_409(intake: Intake) -> None:
    rid, _, org = intake.offered()
    intake.post(f"/v1/referrals/{rid}/cancel", intake.officer())
    resp = intake.post(f"/v1/referrals/{rid}/accept", intake.provider(org))
    assert resp.status_code == 409 and "withdrawn" in resp.get_json()["detail"]
    assert resp.get_json()["current_status"] == "cancelled"


def test_decline_needs_a_known_reason_and_sends_the_referral_back_to_routing(
        intake: Intake) -> None:
    rid, service, org = intake.offered()
    bad = intake.post(f"/v1/referrals/{rid}/decline", intake.provider(org), {"reason": "meh"})
    assert bad.status_code == 422 and "reason" in bad.get_json()["detail"]
    ok = intake.post(f"/v1/referrals/{rid}/decline", intake.provider(org),
                     {"reason": "no_capacity"})
    assert ok.status_code == 200 and ok.get_json()["offer"]["status"] == "declined"
    assert _status_events(intake)[-1] == ("offered", "submitted", "no_capacity")
    intake.propose(rid, service, org)  # matching would never, but a repeat is voided
    assert _status_events(intake)[-1] == ("submitted", "submitted", "proposal_void")
    # the declined provider no longer sees the referral
    assert intake.client.get(f"/v1/referrals/{rid}",
                             headers=intake.provider(org)).status_code == 404


def test_same_idempotency_key_replays_an_action_and_a_different_body_is_refused(
        intake: Intake) -> None:
    rid, _, org = intake.offered()
    h = {**intake.provider(org), "Idempotency-Key": "accept-1"}
    first = intake.post(f"/v1/referrals/{rid}/accept", h)
    second = intake.post(f"/v1/referrals/{rid}/accept", h)
    assert second.status_code == 200 and second.headers["Idempotent-Replayed"] == "true"
    assert second.get_json() == first.get_json()
    assert len([e for e in intake.events(events.REFERRAL_STATUS_CHANGED)
                if e.data["to_status"] == "accepted"]) == 1
    other = intake.post(f"/v1/referrals/{rid}/progress", h, {"status": "in_progress"})
    assert other.status_code == 422 and "Idempotency-Key" in other.get_json()["detail"]


def test_officer_lists_own_referrals_sees_timeline_and_cancels(intake: Intake) -> None:
    mine = intake.submit()["id"]
    intake.submit(headers=intake.officer("officer-b"))
    listed = intake.client.get("/v1/referrals", headers=intake.officer()).get_json()
    assert [r["id"] for r in listed["items"]] == [mine] and listed["total"] == 1
    intake.propose(mine)
    tl = intake.client.get(f"/v1/referrals/{mine}/timeline", headers=intake.officer())
    assert [e["status"] for e in tl.get_json()["items"]] == ["submitted", "offered"]
    resp = intake.post(f"/v1/referrals/{mine}/cancel", intake.officer())
    assert resp.status_code == 200 and resp.get_json()["status"] == "cancelled"
    ev = intake.events(events.REFERRAL_STATUS_CHANGED)[-1].data
    assert ev["reason_code"] == "cancelled_by_officer" and ev["offer"]["status"] == "withdrawn"
    again = intake.post(f"/v1/referrals/{mine}/cancel", intake.officer())
    assert again.status_code == 409 and again.get_json()["current_status"] == "cancelled"
    other = intake.post(f"/v1/referrals/{mine}/cancel", intake.officer("officer-b"))
    assert other.status_code == 404


def test_second_need_of_the_same_resident_shares_the_subject(intake: Intake) -> None:
    first = intake.submit()["id"]
    body = {"need": "mental_health", "urgency": "routine", "same_subject_as": first,
            "consent": {"share_with_provider": False, "referrer_updates": "milestones",
                        "contact_methods": [], "obtained_via": "written"}}
    resp = intake.post("/v1/referrals", intake.officer(), body)
    assert resp.status_code == 201
    assert len(intake.sql("SELECT id FROM subjects")) == 1
    assert len({r[0] for r in intake.sql("SELECT subject_id FROM referrals")}) == 1
    stranger = intake.post("/v1/referrals", intake.officer("officer-b"), body)
    assert stranger.status_code == 422 and "same_subject_as" in stranger.get_json()["detail"]
    both = intake.post("/v1/referrals", intake.officer(),
                       {**body, "location": {"lat": 1, "lon": 1}})
    assert both.status_code == 422 and "location" in both.get_json()["detail"]


def test_unknown_referral_and_wrong_role_answers(intake: Intake) -> None:
    missing = str(uuid.uuid4())
    assert intake.post(f"/v1/referrals/{missing}/accept",
                       intake.provider("x")).status_code == 404
    rid = intake.submit()["id"]
    assert intake.post(f"/v1/referrals/{rid}/accept", intake.officer()).status_code == 403
