"""One referral across the four real services, real PostgreSQL and the real broker."""
from __future__ import annotations

import signal
import uuid
from typing import Any, Iterator

import pytest
import requests

from servicekit import demo
from servicekit.auth import mint_dev_token
from servicekit.provisioning import prepare
from servicekit.settings import SERVICE_MODULES, Settings
from servicekit.stack import Stack, base_env, start_stack
from servicekit.testing import Infrastructure, iter_topic, wait_for

pytestmark = pytest.mark.e2e

CANARY = {"given_name": "Zebulon", "family_name": "Quartermaine-Canary",
          "phone": "+15550199876", "email": "zebulon.canary@example.org"}


@pytest.fixture(scope="module")
def stack(infra: Infrastructure, stack_kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    var = tmp_path_factory.mktemp("e2e")
    dbs = {service: infra.new_database(service) for service in SERVICE_MODULES}
    prepare(dbs)
    env = base_env(var / "var", stack_kafka, dbs)
    running = start_stack(env, var / "logs")
    yield running
    codes = running.stop_all()
    assert all(code == 0 for code in codes.values()), codes  # SIGTERM stops cleanly


def _token(stack: Stack, role: str, sub: str, **claims: Any) -> dict[str, str]:
    settings = Settings.from_env("cli", stack.env)
    return {"Authorization": "Bearer " + mint_dev_token(settings, sub=sub, role=role, **claims)}


def _referral(**subject: Any) -> dict[str, Any]:
    return {"need": "housing", "urgency": "urgent",
            "subject": {**CANARY, "age": 41, **subject},
            "location": {"lat": 47.6097, "lon": -122.3331},
            "notes": "canary note: sleeping in car near the pier",
            "consent": {"share_with_provider": True, "referrer_updates": "milestones",
                        "contact_methods": ["phone"], "obtained_via": "verbal"}}


def test_referral_becomes_an_offer_the_provider_sees_with_a_notification(
        stack: Stack, infra: Infrastructure) -> None:
    intake, notes = stack.urls["referral-intake"], stack.urls["notifications"]
    officer = _token(stack, "officer", "officer-e2e", agency=demo.AGENCY)
    provider = _token(stack, "provider", "staff-e2e", org=demo.DEMO_ORG_ID)
    other = _token(stack, "provider", "staff-other", org=demo.DEMO_ORG2_ID)
    key = {"Idempotency-Key": str(uuid.uuid4())}
    created = requests.post(intake + "/v1/referrals", json=_referral(),
                            headers={**officer, **key}, timeout=10)
    assert created.status_code == 201, created.text
    referral_id = created.json()["id"]
    again = requests.post(intake + "/v1/referrals", json=_referral(), headers={**officer, **key},
                          timeout=10)
    assert again.status_code == 201 and again.json()["id"] == referral_id

    def offered() -> dict[str, Any] | None:
        items = requests.get(intake + "/v1/referrals", headers=provider, timeout=5).json()["items"]
        return next((i for i in items if i["id"] == referral_id), None)

    offer = wait_for(offered, timeout=30, message="the offer to reach the seeded provider")
    assert offer["status"] == "offered" and offer["offer"]["status"] == "open"
    assert offer["offer"]["service_id"] == demo.DEMO_SERVICE_ID
    assert offer["contact"]["phone"] == CANARY["phone"]  # consent allows it while offered
    assert all(i["id"] != referral_id for i in requests.get(
        intake + "/v1/referrals", headers=other, timeout=5).json()["items"])

    def notified() -> dict[str, Any] | None:
        items = requests.get(notes + "/v1/notifications", headers=provider, timeout=5
                             ).json()["items"]
        return next((n for n in items if n["referral_id"] == referral_id), None)

    note = wait_for(notified, timeout=30, message="the provider's in-app notification")
    text = str(note)
    assert offer["short_id"] in text
    for value in CANARY.values():
        assert value not in text
    mine = requests.get(intake + "/v1/referrals", headers=officer, timeout=5).json()["items"]
    assert [i["status"] for i in mine if i["id"] == referral_id] == ["received"]
    _assert_no_canary_on_topics(stack.env["KAFKA_BOOTSTRAP_SERVERS"])
    _assert_no_canary_in_logs(stack)


def _assert_no_canary_on_topics(bootstrap: str) -> None:
    from servicekit import events

    for topic in events.ALL_TOPICS:
        for record in iter_topic(bootstrap, topic, timeout_s=2):
            for value in (*CANARY.values(), "sleeping in car"):
                assert value.encode() not in record.value, (topic, "carries PII")


def _assert_no_canary_in_logs(stack: Stack) -> None:
    logs = stack.logs()
    assert "request" in logs  # the access log is really captured
    for value in (*CANARY.values(), "sleeping in car"):
        assert value not in logs


def test_bad_input_is_a_problem_naming_the_field_and_nothing_is_stored(stack: Stack) -> None:
    intake = stack.urls["referral-intake"]
    officer = _token(stack, "officer", "officer-bad", agency=demo.AGENCY)
    bad = _referral(phone="555-not-e164")
    resp = requests.post(intake + "/v1/referrals", json=bad, headers=officer, timeout=10)
    assert resp.status_code == 422
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert "subject.phone" in resp.json()["detail"]
    assert "555-not-e164" not in resp.text
    too_big = requests.post(intake + "/v1/referrals", data=b"{" + b" " * 70000 + b"}",
                            headers={**officer, "Content-Type": "application/json"}, timeout=10)
    assert too_big.status_code == 413
    wrong_role = requests.post(intake + "/v1/referrals", json=_referral(),
                               headers=_token(stack, "provider", "p", org="x"), timeout=10)
    assert wrong_role.status_code == 403
    listed = requests.get(intake + "/v1/referrals", headers=officer, timeout=5).json()
    assert listed["total"] == 0


def test_worker_stops_cleanly_on_sigterm_and_restarts(stack: Stack) -> None:
    assert stack.stop("matching-worker", signal.SIGTERM) == 0
    stack.start("matching-worker", "matching", "worker")
    wait_for(lambda: stack.procs["matching-worker"].poll() is None, timeout=5,
             message="matching worker restarted")
