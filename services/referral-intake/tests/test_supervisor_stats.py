"""Supervisor views, break-glass, re-routing and assignment, and the statistics."""
from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from intake_testkit import CANARY, Intake

from referral_intake import stats
from servicekit import events

pytestmark = pytest.mark.integration


def test_supervisor_sees_de_identified_records_of_the_agency_only(intake: Intake) -> None:
    rid, _, _ = intake.offered()
    intake.submit(headers=intake.officer("o-other", agency="other-pd"))
    listed = intake.client.get("/v1/referrals", headers=intake.supervisor()).get_json()
    assert [r["id"] for r in listed["items"]] == [rid]
    detail = intake.client.get(f"/v1/referrals/{rid}", headers=intake.supervisor()).get_json()
    assert detail["pii"] is None and detail["offers"][0]["status"] == "open"
    for value in CANARY.values():
        assert value not in str(listed) + str(detail)
    assert intake.client.get(f"/v1/referrals/{rid}",
                             headers=intake.supervisor("other-pd")).status_code == 404


def test_break_glass_needs_a_reason_is_audited_and_expires(intake: Intake) -> None:
    rid = intake.submit()["id"]
    short = intake.post(f"/v1/referrals/{rid}/pii-access", intake.supervisor(), {"reason": "x"})
    assert short.status_code == 422 and "reason" in short.get_json()["detail"]
    reason = "resident asked for a welfare check"
    resp = intake.post(f"/v1/referrals/{rid}/pii-access", intake.supervisor(),
                       {"reason": reason})
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["pii"]["phone"] == CANARY["phone"] and body["pii"]["notes"] == CANARY["notes"]
    detail = intake.client.get(f"/v1/referrals/{rid}", headers=intake.supervisor()).get_json()
    assert detail["pii"]["family_name"] == CANARY["family_name"]
    other = intake.client.get(f"/v1/referrals/{rid}",
                              headers=intake.supervisor(sub="sup-2")).get_json()
    assert other["pii"] is None  # the grant is personal
    audit = intake.sql("SELECT action, purpose, actor FROM audit_log WHERE role = 'supervisor'")
    assert ("break_glass", "break_glass", "sup-1") in [tuple(r) for r in audit]
    assert reason not in str(intake.sql("SELECT * FROM pii_grants"))  # reason is encrypted
    assert intake.sql("SELECT count(*) FROM idempotency_key")[0][0] == 0  # PII never stored
    intake.sql("UPDATE pii_grants SET expires_at = now() - interval '1 second'")
    expired = intake.client.get(f"/v1/referrals/{rid}", headers=intake.supervisor()).get_json()
    assert expired["pii"] is None


def test_reroute_withdraws_the_offer_and_assign_makes_a_new_one(intake: Intake) -> None:
    rid, service, _org = intake.offered()
    resp = intake.post(f"/v1/referrals/{rid}/reroute", intake.supervisor())
    assert resp.status_code == 200 and resp.get_json()["status"] == "submitted"
    last = intake.events(events.REFERRAL_STATUS_CHANGED)[-1].data
    assert last["reason_code"] == "rerouted" and last["offer"]["status"] == "withdrawn"
    unknown = intake.post(f"/v1/referrals/{rid}/assign", intake.supervisor(),
                          {"service_id": "svc-new"})
    assert unknown.status_code == 422 and "service_id" in unknown.get_json()["detail"]
    again = intake.post(f"/v1/referrals/{rid}/assign", intake.supervisor(),
                        {"service_id": service})
    assert again.status_code == 409  # the service already had its chance
    new_org = str(uuid.uuid4())
    ok = intake.post(f"/v1/referrals/{rid}/assign", intake.supervisor(),
                     {"service_id": "svc-new", "organization_id": new_org})
    assert ok.status_code == 200 and ok.get_json()["status"] == "offered"
    last = intake.events(events.REFERRAL_STATUS_CHANGED)[-1].data
    assert last["actor_role"] == "supervisor" and last["offer"]["organization_id"] == new_org
    assert last["proposal_id"] is None  # not one of matching's reservations
    assert intake.post(f"/v1/referrals/{rid}/accept", intake.provider(new_org)
                       ).status_code == 200


def test_agency_stats_report_completion_times_and_breaches(intake: Intake) -> None:
    done, _, org = intake.offered()
    p = intake.provider(org)
    intake.post(f"/v1/referrals/{done}/accept", p)
    intake.post(f"/v1/referrals/{done}/progress", p, {"status": "in_progress"})
    intake.post(f"/v1/referrals/{done}/close", p, {"outcome": "completed",
                                                   "outcome_code": "connected"})
    failed, _, org2 = intake.offered(need="food")
    intake.post(f"/v1/referrals/{failed}/accept", intake.provider(org2))
    intake.post(f"/v1/referrals/{failed}/close", intake.provider(org2),
                {"outcome": "failed", "outcome_code": "unable_to_contact"})
    unmatched = intake.submit(need="legal")["id"]
    intake.sql("UPDATE referrals SET status = 'unmatched' WHERE id = :id", id=unmatched)
    body = intake.client.get("/v1/stats", headers=intake.supervisor()).get_json()
    assert body["total"] == 3 and body["completion_rate"] == 0.5
    assert body["by_status"] == {"completed": 1, "failed": 1, "unmatched": 1}
    assert body["time_to_accept"]["count"] == 2 and body["time_to_accept"]["median_s"] >= 0
    assert body["time_to_first_contact"]["count"] == 2
    assert [u["id"] for u in body["unmatched_queue"]] == [unmatched]
    assert body["by_need"]["housing"]["completion_rate"] == 1.0
    assert set(body["by_urgency"]) == {"urgent"} and len(body["by_week"]) == 1
    assert intake.client.get("/v1/stats", headers=intake.officer()).status_code == 403
    assert intake.client.get("/v1/stats", headers=intake.supervisor("x")).get_json()["total"] == 0


def test_public_stats_need_no_token_and_suppress_small_cells(intake: Intake) -> None:
    for _ in range(12):
        intake.submit()
    for _ in range(3):
        intake.submit(need="food")
    body = intake.client.get("/v1/public/stats").get_json()
    rows = {r["need"]: r for r in body["rows"]}
    assert rows["food"]["open"] is None and rows["food"]["total"] is None
    # 15 total minus 12 housing would reveal the food cell: one of them is withheld too
    assert body["totals"]["open"] is None or rows["housing"]["open"] is None
    assert rows["legal"]["open"] == 0 or rows["legal"]["open"] is None
    for value in CANARY.values():
        assert value not in str(body)


def _grid(cells: list[list[int]]) -> list[list[int]]:
    grid = [row + [sum(row)] for row in cells]
    grid.append([sum(r[i] for r in grid) for i in range(len(grid[0]))])
    return grid


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5).flatmap(lambda cols: st.lists(
    st.lists(st.integers(0, 40), min_size=cols, max_size=cols), min_size=1, max_size=6)))
def test_no_suppressed_cell_can_be_recovered_from_one_published_total(
        cells: list[list[int]]) -> None:
    grid = _grid(cells)
    hidden = stats.suppress(grid)
    rows, cols = len(grid), len(grid[0])
    for r in range(rows):
        for c in range(cols):
            if 0 < grid[r][c] < stats.MIN_CELL:
                assert hidden[r][c], "a small cell was published"
    for line in ([[(r, c) for c in range(cols)] for r in range(rows)]
                 + [[(r, c) for r in range(rows)] for c in range(cols)]):
        assert sum(hidden[r][c] for r, c in line) != 1, "a lone suppressed entry is derivable"


def _upserted(service: str, org: str) -> events.Envelope:
    return events.new_event(events.PROVIDER_SERVICE_UPSERTED, subject=service, sequence=1,
                            source="provider-registry", data={
        "service_id": service, "organization_id": org, "organization_name": "Harbor House",
        "service_name": "Emergency Shelter", "status": "active", "categories": ["housing"],
        "locations": [], "service_area": {"radius_km": 10, "geohashes": []},
        "age_min": None, "age_max": None, "genders": [], "populations": [], "languages": ["en"],
        "interpretation_available": False,
        "schedule": {"always_open": True, "timezone": "UTC", "hours": []},
        "capacity": {"maximum": 5, "accepting": True}, "notification_channels": ["in_app"],
        "updated_at": "2026-01-01T00:00:00Z"})


def test_directory_events_name_the_provider_for_full_consent_and_assignment(
        intake: Intake) -> None:
    from referral_intake import handlers

    org = str(uuid.uuid4())
    with intake.db.transaction() as s:
        handlers.on_service_upserted(s, intake.ctx, _upserted("svc-harbor", org))
    rid = intake.submit()["id"]
    ok = intake.post(f"/v1/referrals/{rid}/assign", intake.supervisor(),
                     {"service_id": "svc-harbor"})
    assert ok.status_code == 200
    assert intake.events(events.REFERRAL_STATUS_CHANGED)[-1].data["offer"][
        "organization_id"] == org
    intake.post(f"/v1/referrals/{rid}/accept", intake.provider(org))
    view = intake.client.get(f"/v1/referrals/{rid}", headers=intake.officer()).get_json()
    assert view["provider"]["organization_name"] == "Harbor House"
    wrong = intake.post(f"/v1/referrals/{intake.submit()['id']}/assign", intake.supervisor(),
                        {"service_id": "svc-harbor", "organization_id": "someone-else"})
    assert wrong.status_code == 422 and "organization_id" in wrong.get_json()["detail"]
