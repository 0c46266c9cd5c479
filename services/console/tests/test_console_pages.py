"""The console's pages against the real service apis (PostgreSQL, no workers)."""
from __future__ import annotations

import re
from typing import Any

import pytest
import requests
from console_testkit import Backend, csrf_of, sign_in
from flask import Flask

from servicekit import demo
from servicekit.auth import mint_dev_token
from servicekit.settings import Settings

pytestmark = pytest.mark.integration
OFFICER, PROVIDER, SUPERVISOR, ADMIN = 0, 1, 3, 4


def _form(key: str, csrf: str, **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "csrf_token": csrf, "idempotency_key": key, "need": "housing", "urgency": "urgent",
        "subject.given_name": "Odalys", "subject.age": "52", "subject.phone": "+12065550188",
        "location.lat": "47.6097", "location.lon": "-122.3331",
        "consent.share_with_provider": "yes", "consent.referrer_updates": "milestones",
        "consent.contact_methods": ["phone"], "consent.obtained_via": "verbal",
    }
    data.update(over)
    return data


def _officer_list(backend: Backend) -> dict[str, Any]:
    token = mint_dev_token(backend.settings["referral-intake"], sub="officer-ortiz",
                           role="officer", agency=demo.AGENCY)
    return requests.get(backend.urls["referral-intake"] + "/v1/referrals", timeout=5,
                        headers={"Authorization": f"Bearer {token}"}).json()


def _new_form(client: Any) -> tuple[str, str]:
    page = client.get("/referrals/new")
    assert page.status_code == 200
    key = re.search(r'name="idempotency_key" value="([^"]+)"', page.text)
    assert key
    return key.group(1), csrf_of(page.text)


def test_double_submit_of_one_rendered_form_creates_one_referral(
        console: Flask, backend: Backend) -> None:
    client = console.test_client()
    sign_in(client, OFFICER)
    key, csrf = _new_form(client)
    first = client.post("/referrals/new", data=_form(key, csrf))
    second = client.post("/referrals/new", data=_form(key, csrf))
    assert first.status_code == second.status_code == 303
    assert first.headers["Location"] == second.headers["Location"]
    assert _officer_list(backend)["total"] == 1
    confirmation = client.get(first.headers["Location"])
    assert confirmation.status_code == 200 and 'data-status="' in confirmation.text
    assert "Odalys" not in first.headers["Location"]  # no personal data in URLs
    other_key, _ = _new_form(client)
    assert other_key != key  # each render gets its own key
    client.post("/referrals/new", data=_form(other_key, csrf))
    assert _officer_list(backend)["total"] == 2
    mine = client.get("/referrals")
    assert mine.text.count('class="card"') == 2


def test_validation_errors_appear_next_to_their_fields_in_plain_language(
        console: Flask, backend: Backend) -> None:
    client = console.test_client()
    sign_in(client, OFFICER)
    key, csrf = _new_form(client)
    resp = client.post("/referrals/new", data=_form(
        key, csrf, **{"subject.phone": "555-0188", "subject.given_name": "",
                      "consent.obtained_via": ""}))
    assert resp.status_code == 422
    html = resp.text
    phone = re.search(r'id="err-subject-phone">([^<]+)<', html)
    assert phone and "E.164" in phone.group(1)
    assert re.search(r'id="err-subject-given_name">This is required\.<', html)
    assert re.search(r'id="err-consent-obtained_via">This is required\.<', html)
    assert 'aria-describedby="hint-subject-phone err-subject-phone" aria-invalid="true"' in html
    assert 'value="555-0188"' in html and f'value="{key}"' in html  # typed values kept
    assert _officer_list(backend)["total"] == 0


def test_a_typed_address_fills_the_coordinates_and_is_not_sent(
        console: Flask, backend: Backend) -> None:
    client = console.test_client()
    sign_in(client, OFFICER)
    key, csrf = _new_form(client)
    address = {"location.lat": "", "location.lon": "",
               "location.address": "1000 Fourth Avenue, Seattle"}
    found = client.post("/referrals/new", data=_form(key, csrf, action="locate", **address))
    assert found.status_code == 200
    assert "Found: Seattle Central Library (1000 4th Ave)" in found.text
    assert 'value="47.60672"' in found.text and 'value="-122.33250"' in found.text
    assert 'value="+12065550188"' in found.text and f'value="{key}"' in found.text
    assert _officer_list(backend)["total"] == 0  # looking up sends nothing

    # sending straight away looks the address up too
    sent = client.post("/referrals/new", data=_form(key, csrf, **address))
    assert sent.status_code == 303
    listing = _officer_list(backend)
    assert listing["total"] == 1
    assert "Fourth" not in repr(listing) and "Fourth" not in sent.headers["Location"]


def test_an_ambiguous_or_unknown_address_asks_the_officer(
        console: Flask, backend: Backend) -> None:
    client = console.test_client()
    sign_in(client, OFFICER)
    key, csrf = _new_form(client)
    blank = {"location.lat": "", "location.lon": ""}
    unknown = client.post("/referrals/new", data=_form(
        key, csrf, **blank, **{"location.address": "12 Nowhere Lane"}))
    assert unknown.status_code == 422
    assert re.search(r'id="err-location-address">No place found', unknown.text)

    several = client.post("/referrals/new", data=_form(
        key, csrf, **blank, **{"location.address": "station"}))
    assert several.status_code == 422 and "Several places match" in several.text
    picks = re.findall(r'name="location.pick" value="([^"]+)"', several.text)
    assert len(picks) >= 2
    assert _officer_list(backend)["total"] == 0
    chosen = client.post("/referrals/new", data=_form(
        key, csrf, **blank, **{"location.address": "station", "location.pick": picks[1]}))
    assert chosen.status_code == 303
    assert _officer_list(backend)["total"] == 1


def test_address_lookup_can_be_switched_off(backend: Backend) -> None:
    from console.app import create_app

    client = create_app(backend.console_config(CONSOLE_GEOCODER="off")).test_client()
    sign_in(client, OFFICER)
    key, csrf = _new_form(client)
    assert 'name="location.address"' not in client.get("/referrals/new").text
    resp = client.post("/referrals/new", data=_form(key, csrf, action="locate"))
    assert resp.status_code == 200 and "Address lookup is off" in resp.text


def test_expired_session_returns_to_sign_in_with_only_the_path(
        console: Flask, backend: Backend) -> None:
    client = console.test_client()
    sign_in(client, OFFICER)
    key, csrf = _new_form(client)
    expired = mint_dev_token(backend.settings["referral-intake"], sub="officer-ortiz",
                             role="officer", agency=demo.AGENCY, ttl_seconds=-120)
    with client.session_transaction() as session:
        session["token"] = expired
    resp = client.post("/referrals/new", data=_form(key, csrf),
                       headers={"Referer": "http://localhost/referrals/new"})
    assert resp.status_code == 303
    assert resp.headers["Location"] == "/signin?next=/referrals/new"
    partial = client.get("/referrals", headers={"HX-Request": "true"})
    assert partial.status_code == 401  # htmx follows HX-Redirect instead of swapping
    assert partial.headers["HX-Redirect"] == "/signin?next=/referrals"
    page = client.get(resp.headers["Location"])
    assert "Your session ended" in page.text
    csrf_again = csrf_of(page.text)
    back = client.post("/signin/demo", data={"user": str(OFFICER), "csrf_token": csrf_again})
    assert back.headers["Location"] == "/referrals/new"
    assert _officer_list(backend)["total"] == 0
    htmx = client.get("/referrals", headers={"HX-Request": "true"})
    assert htmx.status_code == 200  # signed in again


def test_forms_without_the_csrf_token_are_refused(console: Flask, backend: Backend) -> None:
    client = console.test_client()
    sign_in(client, OFFICER)
    key, _csrf = _new_form(client)
    resp = client.post("/referrals/new", data=_form(key, "forged"))
    assert resp.status_code == 400
    assert _officer_list(backend)["total"] == 0
    assert client.post("/signin/demo", data={"user": "0"}).status_code == 400


def test_pages_carry_a_strict_csp_and_the_cookie_is_httponly_samesite(
        console: Flask, backend: Backend) -> None:
    client = console.test_client()
    page = client.get("/signin")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    resp = client.post("/signin/demo", data={"user": "0", "csrf_token": csrf_of(page.text)})
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    tls = backend.console_config(CONSOLE_PUBLIC_URL="https://console.example.org")
    from console.app import create_app

    secure = create_app(tls).test_client()
    page = secure.get("/signin")
    cookie = secure.post("/signin/demo", data={"user": "0", "csrf_token": csrf_of(page.text)}
                         ).headers["Set-Cookie"]
    assert "Secure" in cookie


def test_each_role_reaches_only_its_own_pages(console: Flask, backend: Backend) -> None:
    client = console.test_client()
    assert client.get("/provider/inbox").headers["Location"].startswith("/signin")
    sign_in(client, PROVIDER)
    assert client.get("/").headers["Location"] == "/provider/inbox"
    assert client.get("/provider/inbox").status_code == 200
    assert client.get("/referrals/new").status_code == 403
    assert client.get("/supervisor/").status_code == 403


def test_provider_pauses_offers_for_its_service(console: Flask, backend: Backend) -> None:
    client = console.test_client()
    csrf = sign_in(client, PROVIDER)
    page = client.get("/provider/capacity")
    assert page.status_code == 200 and demo.DEMO_SERVICE_ID in page.text
    resp = client.post(f"/provider/capacity/{demo.DEMO_SERVICE_ID}",
                       data={"csrf_token": csrf, "maximum": "7", "accepting": "no"})
    assert resp.status_code == 303
    token = mint_dev_token(backend.settings["provider-registry"], sub="a", role="admin")
    svc = requests.get(f"{backend.urls['provider-registry']}/v1/services/{demo.DEMO_SERVICE_ID}",
                       headers={"Authorization": f"Bearer {token}"}, timeout=5).json()
    assert svc["capacity"]["maximum"] == 7 and svc["capacity"]["accepting"] is False
    bad = client.post(f"/provider/capacity/{demo.DEMO_SERVICE_ID}",
                      data={"csrf_token": csrf, "maximum": "-3", "accepting": "yes"})
    assert bad.status_code == 422 and 'class="field-error"' in bad.text


def test_supervisor_dashboard_counts_the_agency_referrals(
        console: Flask, backend: Backend) -> None:
    officer = console.test_client()
    sign_in(officer, OFFICER)
    key, csrf = _new_form(officer)
    assert officer.post("/referrals/new", data=_form(key, csrf)).status_code == 303
    supervisor = console.test_client()
    sign_in(supervisor, SUPERVISOR)
    page = supervisor.get("/supervisor/")
    assert page.status_code == 200
    assert re.search(r'data-metric="total">1<', page.text)
    assert 'id="chart-funnel"' in page.text
    listing = supervisor.get("/supervisor/referrals")
    assert "Odalys" not in listing.text and "+12065550188" not in listing.text


def test_settings_only_expose_console_variables_in_their_block() -> None:
    from servicekit.settings import ENVIRONMENT

    names = [v.name for v in ENVIRONMENT if v.services == "console"]
    assert "CONSOLE_PORT" in names and "CONSOLE_OIDC_ISSUER" in names
    assert Settings.from_env("cli", {}).get("CONSOLE_PORT") == "8000"
