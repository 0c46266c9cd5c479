"""The consent matrix, the authorization matrix over every endpoint, and canary PII."""
from __future__ import annotations

import io
import logging
import uuid
from typing import Any

import pytest
from intake_testkit import CANARY, Intake
from sqlalchemy import inspect, text

from referral_intake import views
from servicekit import events, logs
from servicekit import kafka as kafkakit
from servicekit.outbox import OutboxRelay
from servicekit.testing import iter_topic

BASE = {"id", "short_id", "need", "urgency", "status", "created_at"}
DEID = BASE | {"agency_id", "coarse_location", "eligibility", "updated_at"}
IDENTITY = {"contact.given_name", "contact.family_name", "contact.birth_date",
            "contact.contact_methods", "contact.notes"}
PII_ALL = {"pii.given_name", "pii.family_name", "pii.birth_date", "pii.phone", "pii.email",
           "pii.location", "pii.notes"}


def _consent(share: bool = True, updates: str = "full",
             methods: tuple[str, ...] = ("phone", "email")) -> dict[str, Any]:
    return {"share_with_provider": share, "referrer_updates": updates,
            "contact_methods": list(methods)}


@pytest.mark.parametrize("updates, expected", [
    ("none", BASE | {"consent"}),
    ("milestones", BASE | {"consent"}),
    ("full", BASE | {"consent", "provider", "outcome_code"}),
])
@pytest.mark.parametrize("status", ["submitted", "offered", "in_progress", "completed"])
def test_officer_fields_by_consent(updates: str, expected: set[str], status: str) -> None:
    assert views.visible_fields("officer", _consent(updates=updates), status) == expected


PROVIDER_DEID = DEID | {"offer", "contact", "outcome_code"}


@pytest.mark.parametrize("share, offer, status, methods, expected", [
    (True, "open", "offered", ("phone", "email"),
     PROVIDER_DEID | IDENTITY | {"contact.phone", "contact.email"}),
    (True, "accepted", "in_progress", ("sms",), PROVIDER_DEID | IDENTITY | {"contact.phone"}),
    (True, "accepted", "on_hold", ("in_person",),
     PROVIDER_DEID | IDENTITY | {"contact.location"}),
    (True, "accepted", "accepted", (), PROVIDER_DEID | IDENTITY),
    (True, "accepted", "completed", ("phone",), PROVIDER_DEID),  # case closed
    (True, None, "submitted", ("phone",), PROVIDER_DEID),  # offer declined/expired/withdrawn
    (False, "open", "offered", ("phone", "email"), PROVIDER_DEID),
    (False, "accepted", "in_progress", ("phone",), PROVIDER_DEID),
])
def test_provider_fields_by_consent_and_offer(share: bool, offer: str | None, status: str,
                                              methods: tuple[str, ...],
                                              expected: set[str]) -> None:
    consent = _consent(share=share, methods=methods)
    assert views.visible_fields("provider", consent, status, offer_status=offer) == expected


@pytest.mark.parametrize("glass, expected", [
    (False, DEID | {"offers", "outcome_code", "consent", "pii"}),
    (True, DEID | {"offers", "outcome_code", "consent", "pii"} | PII_ALL),
])
@pytest.mark.parametrize("share", [True, False])
def test_supervisor_fields_only_break_glass_opens_pii(glass: bool, expected: set[str],
                                                      share: bool) -> None:
    got = views.visible_fields("supervisor", _consent(share=share), "offered", break_glass=glass)
    assert got == expected
    assert views.visible_fields("admin", _consent(), "offered") == frozenset()


# ---- authorization matrix ---------------------------------------------------------------

CALLERS = ("officer_a", "officer_b", "supervisor", "supervisor_other", "provider_x",
           "provider_y", "admin", "anonymous")
# endpoint -> (method, path template, body, {caller: expected status})
OK_READ = {"officer_a": 200, "officer_b": 404, "supervisor": 200, "supervisor_other": 404,
           "provider_x": 200, "provider_y": 404, "admin": 403, "anonymous": 401}


def _writes(allowed: set[str], body: Any) -> dict[str, int]:
    """Expected answer of a state-changing endpoint from each caller who must not use it."""
    out = {}
    for caller in CALLERS:
        role = caller.split("_")[0]
        if caller == "anonymous":
            out[caller] = 401
        elif role not in allowed:
            out[caller] = 403
        elif caller in ("officer_b", "supervisor_other", "provider_y"):
            out[caller] = 404
    return out


ENDPOINTS: list[tuple[str, str, Any, dict[str, int]]] = [
    ("GET", "/v1/referrals/{id}", None, OK_READ),
    ("GET", "/v1/referrals/{id}/timeline", None, OK_READ),
    ("GET", "/v1/referrals/{id}/consent", None,
     {**OK_READ, "provider_x": 403, "provider_y": 403}),
    ("POST", "/v1/referrals/{id}/accept", {}, _writes({"provider"}, {})),
    ("POST", "/v1/referrals/{id}/decline", {"reason": "other"}, _writes({"provider"}, {})),
    ("POST", "/v1/referrals/{id}/progress", {"status": "on_hold"}, _writes({"provider"}, {})),
    ("POST", "/v1/referrals/{id}/close", {"outcome": "failed", "outcome_code": "other"},
     _writes({"provider"}, {})),
    ("POST", "/v1/referrals/{id}/cancel", {}, _writes({"officer", "supervisor"}, {})),
    ("POST", "/v1/referrals/{id}/reroute", {}, _writes({"supervisor"}, {})),
    ("POST", "/v1/referrals/{id}/entered-in-error", {}, _writes({"supervisor"}, {})),
    ("POST", "/v1/referrals/{id}/assign", {"service_id": "s"}, _writes({"supervisor"}, {})),
    ("PUT", "/v1/referrals/{id}/consent", {"share_with_provider": False,
                                           "referrer_updates": "none", "contact_methods": [],
                                           "obtained_via": "verbal"},
     _writes({"officer", "supervisor"}, {})),
    ("DELETE", "/v1/referrals/{id}/subject", None, _writes({"supervisor"}, {})),
    ("POST", "/v1/referrals/{id}/pii-access", {"reason": "a long enough reason"},
     _writes({"supervisor"}, {})),
    ("GET", "/v1/stats", None, {"officer_a": 403, "provider_x": 403, "admin": 403,
                                "supervisor": 200, "anonymous": 401}),
    ("GET", "/v1/audit", None, {"officer_a": 403, "supervisor": 403, "provider_x": 403,
                                "admin": 200, "anonymous": 401}),
    ("POST", "/v1/audit/verify", None, {"officer_a": 403, "supervisor": 403, "admin": 200,
                                        "anonymous": 401}),
    ("POST", "/v1/referrals", None, {"supervisor": 403, "provider_x": 403, "admin": 403,
                                     "anonymous": 401}),
]


def _headers(intake: Intake, caller: str, org_x: str) -> dict[str, str]:
    return {
        "officer_a": intake.officer("officer-a"), "officer_b": intake.officer("officer-b"),
        "supervisor": intake.supervisor(), "supervisor_other": intake.supervisor("other-pd"),
        "provider_x": intake.provider(org_x), "provider_y": intake.provider("org-y"),
        "admin": intake.admin(), "anonymous": {},
    }[caller]


@pytest.mark.integration
def test_authorization_matrix_over_every_endpoint(intake: Intake) -> None:
    rid, _, org_x = intake.offered()
    state_before = intake.sql("SELECT status FROM referrals")
    events_before = len(intake.events())
    failures = []
    for method, template, body, expected in ENDPOINTS:
        for caller, status in expected.items():
            resp = intake.client.open(template.format(id=rid), method=method, json=body,
                                      headers=_headers(intake, caller, org_x))
            if resp.status_code != status:
                failures.append((method, template, caller, status, resp.status_code))
            elif status >= 400:
                assert resp.mimetype == "application/problem+json"
    assert failures == []
    assert intake.sql("SELECT status FROM referrals") == state_before
    assert len(intake.events()) == events_before  # refused calls changed nothing
    lists = {c: intake.client.get("/v1/referrals", headers=_headers(intake, c, org_x))
             for c in CALLERS}
    seen = {c: [r["id"] for r in resp.get_json().get("items", [])] for c, resp in lists.items()
            if resp.status_code == 200}
    assert seen == {"officer_a": [rid], "officer_b": [], "supervisor": [rid],
                    "supervisor_other": [], "provider_x": [rid], "provider_y": []}
    assert lists["admin"].status_code == 403 and lists["anonymous"].status_code == 401


# ---- canary PII ---------------------------------------------------------------------------

def _publish_everything(intake: Intake) -> None:
    bootstrap = intake.settings.kafka_bootstrap_servers
    kafkakit.bootstrap_topics(bootstrap, 1, 1)
    producer = kafkakit.make_producer(bootstrap, client_id="canary-test")
    try:
        relay = OutboxRelay(intake.db, producer)
        while relay.run_once():
            pass
    finally:
        producer.close(timeout=10)


@pytest.mark.integration
def test_canary_pii_is_found_nowhere_but_encrypted(intake: Intake) -> None:
    captured = io.StringIO()
    json_lines = logging.StreamHandler(captured)  # the service's own JSON log format
    json_lines.setFormatter(logs.JsonFormatter("referral-intake"))
    root = logging.getLogger()
    root.addHandler(json_lines)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        _canary_activity(intake, captured)
    finally:
        root.removeHandler(json_lines)
        root.setLevel(old_level)


def _canary_activity(intake: Intake, captured: io.StringIO) -> None:
    rid, _, org = intake.offered()
    p = intake.provider(org)
    intake.client.get(f"/v1/referrals/{rid}", headers=p)
    intake.post(f"/v1/referrals/{rid}/accept", p)
    intake.post(f"/v1/referrals/{rid}/progress", p, {"status": "in_progress",
                                                     "note": CANARY["notes"]})
    intake.post(f"/v1/referrals/{rid}/pii-access", intake.supervisor(),
                {"reason": f"asked by {CANARY['family_name']}"})
    bad = intake.post("/v1/referrals", intake.officer(), {
        "need": "housing", "urgency": "urgent", "subject": {
            "given_name": CANARY["given_name"], "phone": CANARY["family_name"],
            "email": CANARY["given_name"], "birth_date": CANARY["notes"]},
        "location": {"lat": 47.6, "lon": -122.3}, "consent": {
            "share_with_provider": True, "referrer_updates": "full", "contact_methods": [],
            "obtained_via": "verbal"}})
    assert bad.status_code == 422
    intake.client.put(f"/v1/referrals/{rid}/consent", headers=intake.officer(), json={
        "share_with_provider": False, "referrer_updates": "milestones", "contact_methods": [],
        "obtained_via": "written"})
    intake.client.delete(f"/v1/referrals/{rid}/subject", headers=intake.supervisor())
    secrets = [v for k, v in CANARY.items() if k != "birth_date"] + ["1987-06-05"]
    # 1. error bodies and logs
    assert not [s for s in secrets if s in bad.get_data(as_text=True)]
    logged = captured.getvalue()
    assert '"endpoint": "/v1/referrals"' in logged  # the logs were captured at all
    assert not [s for s in secrets if s in logged]
    # 2. every topic, dead-letter topics included
    _publish_everything(intake)
    seen_any = False
    for topic in (*events.ALL_TOPICS, *(events.dlq_topic(t) for t in events.ALL_TOPICS)):
        for record in iter_topic(intake.settings.kafka_bootstrap_servers, topic, 3.0):
            raw = (record.value or b"").decode("utf-8", "replace") + str(record.headers)
            seen_any = seen_any or rid in raw
            assert not [s for s in secrets if s in raw], topic
    assert seen_any, "the referral's events were not found on the broker"
    # 3. every column of every table, as stored
    with intake.db.engine.connect() as c:
        for table in inspect(c).get_table_names():
            dump = " ".join(str(row) for row in c.execute(text(f'SELECT * FROM "{table}"')))
            assert not [s for s in secrets if s in dump], table


@pytest.mark.integration
def test_unknown_ids_and_fields_are_problems(intake: Intake) -> None:
    rid = intake.submit()["id"]
    resp = intake.post(f"/v1/referrals/{rid}/cancel", intake.officer(), {"why": "x"})
    assert resp.status_code == 422 and "why" in resp.get_json()["detail"]
    missing = intake.client.get(f"/v1/referrals/{uuid.uuid4()}", headers=intake.officer())
    assert missing.status_code == 404
