"""Supervisor assignment and break-glass, then the provider's whole case, through the
console's pages against the real intake and registry apis (no workers: the supervisor's
manual assignment makes the offer)."""
from __future__ import annotations

import re

import pytest
from console_testkit import Backend, csrf_of, sign_in
from flask import Flask
from flask.testing import FlaskClient

from servicekit import demo

pytestmark = pytest.mark.integration
OFFICER, PROVIDER, SUPERVISOR = 0, 1, 3


def _submit(client: FlaskClient, name: str) -> str:
    page = client.get("/referrals/new").text
    key = re.search(r'name="idempotency_key" value="([^"]+)"', page).group(1)  # type: ignore
    resp = client.post("/referrals/new", data={
        "csrf_token": csrf_of(page), "idempotency_key": key, "need": "housing",
        "urgency": "routine", "subject.given_name": name, "subject.age": "40",
        "subject.phone": "+12065550142", "location.lat": "47.61", "location.lon": "-122.33",
        "consent.share_with_provider": "yes", "consent.referrer_updates": "full",
        "consent.contact_methods": "phone", "consent.obtained_via": "written"})
    assert resp.status_code == 303
    return resp.headers["Location"].split("/referrals/")[1].split("?")[0]


def _assign(supervisor: FlaskClient, csrf: str, referral_id: str) -> None:
    detail = supervisor.get(f"/supervisor/referrals/{referral_id}")
    assert detail.status_code == 200 and demo.DEMO_SERVICE_ID in detail.text
    resp = supervisor.post(f"/supervisor/referrals/{referral_id}/assign",
                           data={"csrf_token": csrf, "service_id": demo.DEMO_SERVICE_ID})
    assert resp.status_code == 303, resp.text


def test_assigned_offer_is_declined_or_worked_to_a_close(console: Flask,
                                                         backend: Backend) -> None:
    officer = console.test_client()
    sign_in(officer, OFFICER)
    declined_id, worked_id = _submit(officer, "Priya"), _submit(officer, "Tomasz")
    supervisor = console.test_client()
    s_csrf = sign_in(supervisor, SUPERVISOR)
    for referral_id in (declined_id, worked_id):
        _assign(supervisor, s_csrf, referral_id)

    provider = console.test_client()
    p_csrf = sign_in(provider, PROVIDER)
    inbox = provider.get("/provider/inbox").text
    assert declined_id in inbox and worked_id in inbox and 'class="countdown"' in inbox
    no_reason = provider.post(f"/provider/referrals/{declined_id}/decline",
                              data={"csrf_token": p_csrf, "reason": ""})
    assert no_reason.status_code == 422 and "reason" in no_reason.text
    assert provider.post(f"/provider/referrals/{declined_id}/decline",
                         data={"csrf_token": p_csrf, "reason": "no_capacity"}).status_code == 303
    assert declined_id not in provider.get("/provider/inbox/offers").text

    accepted = provider.post(f"/provider/referrals/{worked_id}/accept",
                             data={"csrf_token": p_csrf})
    assert accepted.headers["Location"] == f"/provider/cases/{worked_id}"
    case = provider.get(accepted.headers["Location"]).text
    assert "+12065550142" in case  # consent shares contact details with the accepting org
    assert worked_id in provider.get("/provider/cases").text
    assert provider.post(f"/provider/cases/{worked_id}/progress", data={
        "csrf_token": p_csrf, "status": "in_progress", "note": "called"}).status_code == 303
    assert 'data-status="in_progress"' in provider.get(f"/provider/cases/{worked_id}").text
    assert provider.post(f"/provider/cases/{worked_id}/close", data={
        "csrf_token": p_csrf, "outcome": "completed",
        "outcome_code": "enrolled"}).status_code == 303
    assert 'data-status="completed"' in officer.get(f"/referrals/{worked_id}/status").text


def test_break_glass_needs_a_reason_and_shows_the_details_once(console: Flask,
                                                               backend: Backend) -> None:
    officer = console.test_client()
    sign_in(officer, OFFICER)
    referral_id = _submit(officer, "Wilhelmina")
    supervisor = console.test_client()
    csrf = sign_in(supervisor, SUPERVISOR)
    detail = supervisor.get(f"/supervisor/referrals/{referral_id}").text
    assert "Wilhelmina" not in detail  # de-identified by default
    short = supervisor.post(f"/supervisor/referrals/{referral_id}/pii-access",
                            data={"csrf_token": csrf, "reason": "check"})
    assert short.status_code == 422 and "Wilhelmina" not in short.text
    opened = supervisor.post(f"/supervisor/referrals/{referral_id}/pii-access",
                             data={"csrf_token": csrf,
                                   "reason": "resident asked for a call back today"})
    assert opened.status_code == 200 and "Wilhelmina" in opened.text
    assert "Wilhelmina" not in supervisor.get(f"/supervisor/referrals/{referral_id}").text


def test_supervisor_reroute_withdraws_the_open_offer(console: Flask, backend: Backend) -> None:
    officer = console.test_client()
    sign_in(officer, OFFICER)
    referral_id = _submit(officer, "Esperanza")
    supervisor = console.test_client()
    csrf = sign_in(supervisor, SUPERVISOR)
    _assign(supervisor, csrf, referral_id)
    provider = console.test_client()
    sign_in(provider, PROVIDER)
    assert referral_id in provider.get("/provider/inbox/offers").text

    resp = supervisor.post(f"/supervisor/referrals/{referral_id}/reroute",
                           data={"csrf_token": csrf})
    assert resp.status_code == 303, resp.text
    detail = supervisor.get(resp.headers["Location"]).text
    assert "Done: reroute" in detail and 'data-status="submitted"' in detail
    assert referral_id not in provider.get("/provider/inbox/offers").text
    # without a CSRF token nothing happens
    again = supervisor.post(f"/supervisor/referrals/{referral_id}/reroute", data={})
    assert again.status_code in (400, 403)
