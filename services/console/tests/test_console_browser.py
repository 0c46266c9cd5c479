"""The console in headless Chromium (Debian's package) on the real processes: an officer on
a phone submits, the provider sees the offer arrive live and accepts, the officer sees the
milestone the resident consented to, the supervisor's dashboard counts it. Every page is
screenshotted to test-artifacts/console/ and checked with axe-core (no serious or critical
violations), for labelled inputs, and for keyboard operation."""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from console.app import create_app
from console.config import load_config
from servicekit import demo
from servicekit.auth import mint_dev_token
from servicekit.provisioning import prepare
from servicekit.settings import SERVICE_MODULES, Settings
from servicekit.stack import Stack, base_env, start_stack
from servicekit.testing import Infrastructure

pytestmark = pytest.mark.e2e
ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "console"
CHROMIUM = {"executable_path": "/usr/bin/chromium", "headless": True,
            "args": ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]}
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2,
         "is_mobile": True, "has_touch": True, "permissions": ["geolocation"],
         "geolocation": {"latitude": 47.6097, "longitude": -122.3331}}
RESIDENT = {"name": "Zofia", "phone": "+12065550123"}
UNLABELLED = """() => Array.from(document.querySelectorAll(
  'input:not([type=hidden]), select, textarea')).filter(el => !(el.labels && el.labels.length)
  && !el.getAttribute('aria-label') && !el.getAttribute('aria-labelledby'))
  .map(el => el.name || el.id)"""


@pytest.fixture(scope="module")
def stack(infra: Infrastructure, stack_kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    var = tmp_path_factory.mktemp("console-e2e")
    dbs = {service: infra.new_database(service) for service in SERVICE_MODULES}
    prepare(dbs)
    running = start_stack(base_env(var / "var", stack_kafka, dbs), var / "logs")
    yield running
    running.stop_all()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        launched = p.chromium.launch(**CHROMIUM)
        yield launched
        launched.close()


def check_page(page: Page, name: str) -> None:
    """Screenshot, then axe-core (served by the console itself, so CSP allows it) and the
    labelled-inputs rule."""
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    page.add_script_tag(url="/static/vendor/axe-4.14.1.min.js")
    result: dict[str, Any] = page.evaluate("async () => await axe.run(document, "
                                           "{resultTypes: ['violations']})")
    bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
           for v in result["violations"] if v["impact"] in ("serious", "critical")]
    assert not bad, f"{name}: accessibility violations {bad}"
    assert page.evaluate(UNLABELLED) == [], f"{name}: inputs without a label"


def sign_in(page: Page, base: str, role: str) -> None:
    page.goto(base + "/signin")
    page.locator(f"button[data-role={role}]").first.click()
    page.wait_for_url(re.compile(r".*/(referrals/new|provider/inbox|supervisor/|admin/)$"))


def test_officer_to_provider_to_supervisor_in_the_browser(stack: Stack, browser: Browser
                                                          ) -> None:
    base = stack.urls["console"]
    provider = browser.new_context(base_url=base, viewport={"width": 1280, "height": 900})
    officer = browser.new_context(base_url=base, **PHONE)
    supervisor = browser.new_context(base_url=base, viewport={"width": 1280, "height": 900})
    try:
        inbox = provider.new_page()
        inbox.goto(base + "/signin")
        check_page(inbox, "01-signin")
        sign_in(inbox, base, "provider")
        check_page(inbox, "02-provider-inbox-empty")
        inbox.evaluate("window.__sameDocument = true")

        phone = officer.new_page()
        referral_id, short_id = _officer_submits(phone, base)

        offer = inbox.locator(f".offer[data-referral='{referral_id}']")
        expect(offer).to_be_visible(timeout=60_000)
        assert inbox.evaluate("window.__sameDocument === true"), "the inbox was reloaded"
        expect(inbox.locator("#live-status")).to_have_text("New update received.")
        expect(offer.locator(".countdown .left")).to_contain_text("left")
        check_page(inbox, "05-provider-offer-arrived-live")
        offer.get_by_role("button", name=f"Accept {short_id}").click()
        inbox.wait_for_url(re.compile(rf".*/provider/cases/{referral_id}$"))
        expect(inbox.locator("[data-status]")).to_have_attribute("data-status", "accepted")
        expect(inbox.get_by_text(RESIDENT["phone"])).to_be_visible()  # consent allows it
        check_page(inbox, "06-provider-case")

        # the confirmation page refreshes itself: the milestone the resident allowed
        expect(phone.locator("#referral-status [data-status]")).to_have_attribute(
            "data-status", "connected", timeout=30_000)
        check_page(phone, "07-officer-milestone")
        phone.goto(base + "/referrals")
        expect(phone.locator(".card")).to_have_count(1)
        assert RESIDENT["name"] not in phone.content()  # milestones: no resident details
        check_page(phone, "08-officer-my-referrals")

        _supervisor_sees_it(supervisor.new_page(), base, referral_id, short_id)
    finally:
        for context in (provider, officer, supervisor):
            context.close()


def _officer_submits(page: Page, base: str) -> tuple[str, str]:
    sign_in(page, base, "officer")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"  # skip link first
    check_page(page, "03-officer-form-phone")
    page.select_option("#f-need", "housing")
    page.focus("#f-urgency-urgent")
    page.keyboard.press("Space")  # radios and checkboxes work from the keyboard
    page.fill("#f-subject-given_name", RESIDENT["name"])
    page.fill("#f-subject-age", "34")
    page.fill("#f-subject-phone", "555 0123")  # not E.164: the API refuses it
    page.fill("#f-location-address", "1000 Fourth Avenue, Seattle")
    page.get_by_role("button", name="Find this address").click()
    expect(page.locator("#location-status")).to_contain_text("Found: Seattle Central Library")
    expect(page.locator("#f-location-lat")).to_have_value("47.60672")
    expect(page.locator("#f-subject-phone")).to_have_value("555 0123")  # the form is kept
    check_page(page, "03b-officer-address-found")
    page.get_by_role("button", name="Use my current location").click()
    expect(page.locator("#f-location-lat")).to_have_value("47.60970")
    for control in ("#f-share-yes", "#f-updates-milestones", "#f-contact-phone",
                    "#f-obtained-verbal"):
        page.focus(control)
        page.keyboard.press("Space")
    page.get_by_role("button", name="Send referral").click()
    error = page.locator("#err-subject-phone")
    expect(error).to_contain_text("E.164")
    expect(page.locator("#f-subject-phone")).to_have_attribute("aria-invalid", "true")
    assert page.is_checked("#f-updates-milestones")  # the rest of the form is kept
    check_page(page, "04-officer-validation-error")
    page.fill("#f-subject-phone", RESIDENT["phone"])
    page.focus("#send-referral")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/referrals/[0-9a-f-]{36}\?sent=1$"))
    referral_id = page.url.split("/referrals/")[1].split("?")[0]
    short_id = page.locator("h1").inner_text().removeprefix("Referral ").strip()
    assert RESIDENT["name"] not in page.url and RESIDENT["phone"] not in page.url
    check_page(page, "04b-officer-confirmation")
    return referral_id, short_id


def _supervisor_sees_it(page: Page, base: str, referral_id: str, short_id: str) -> None:
    sign_in(page, base, "supervisor")
    expect(page.locator("[data-metric=total]")).to_have_text("1")
    expect(page.locator("[data-metric=funnel-accepted]")).to_have_text("1")
    assert page.evaluate("document.getElementById('chart-funnel').width") > 0  # drawn
    check_page(page, "09-supervisor-dashboard")
    # the figures and charts refresh in place (every 20 s, and at once on a live event);
    # the charts are drawn again and a figures table the reader opened stays open
    drawn = page.get_attribute("body", "data-charts-drawn")
    assert drawn
    page.locator("#h-funnel ~ details summary").click()
    page.evaluate("htmx.trigger(document.body, 'live')")
    expect(page.locator("body")).not_to_have_attribute("data-charts-drawn", drawn)
    expect(page.locator("#h-funnel ~ details")).to_have_attribute("open", "")
    assert page.evaluate("document.getElementById('chart-funnel').width") > 0
    page.goto(base + "/supervisor/referrals")
    expect(page.get_by_role("link", name=short_id)).to_be_visible()
    check_page(page, "10-supervisor-referrals")
    page.get_by_role("link", name=short_id).click()
    page.wait_for_url(re.compile(rf".*/supervisor/referrals/{referral_id}$"))
    content = page.content()
    assert RESIDENT["name"] not in content and RESIDENT["phone"] not in content
    check_page(page, "11-supervisor-detail")
    page.fill("#bg-reason", "Resident called the non-emergency line asking for follow-up")
    page.get_by_role("button", name="Open details").click()
    expect(page.get_by_text(RESIDENT["phone"])).to_be_visible()
    check_page(page, "12-supervisor-break-glass")


def test_the_other_pages_render_accessibly_on_a_phone(stack: Stack, browser: Browser) -> None:
    base = stack.urls["console"]
    context = browser.new_context(base_url=base, **PHONE)
    try:
        page = context.new_page()
        _typed_form_survives_an_expired_session(page, stack)
        sign_in(page, base, "provider")
        for path, name in (("/provider/cases", "13-provider-cases"),
                           ("/provider/capacity", "14-provider-capacity")):
            page.goto(base + path)
            check_page(page, name)
        page.get_by_label("Most residents at once").first.fill("12")
        page.get_by_role("button", name=re.compile("^Save ")).first.click()
        expect(page.locator(".notice")).to_have_text("Saved.")
        expect(page.get_by_label("Most residents at once").first).to_have_value("12")
        page.get_by_role("button", name=re.compile("^Sign out")).click()
        page.wait_for_url(re.compile(r".*/signin\?bye=1$"))

        sign_in(page, base, "admin")
        for path, name in (("/admin/import", "15-admin-import"),
                           ("/admin/webhooks", "16-admin-webhooks"),
                           ("/admin/deliveries", "17-admin-deliveries"),
                           ("/admin/audit", "18-admin-audit")):
            page.goto(base + path)
            assert page.locator("h1").count() == 1
            check_page(page, name)
        page.get_by_role("button", name="Verify the chain").click()
        expect(page.locator("#res-h")).to_have_text("Chain intact")
        check_page(page, "19-admin-audit-verified")
    finally:
        context.close()


def _typed_form_survives_an_expired_session(page: Page, stack: Stack) -> None:
    base = stack.urls["console"]
    sign_in(page, base, "officer")
    page.fill("#f-subject-given_name", "Draftkeeper")
    page.check("#f-updates-full")
    page.check("#f-contact-sms")
    # the same session cookie, but its access token has expired meanwhile
    console = create_app(load_config(stack.env))
    signer = console.session_interface.get_signing_serializer(console)  # type: ignore
    cookie = next(c for c in page.context.cookies() if c["name"] == "console")
    session = signer.loads(cookie["value"])
    session["token"] = mint_dev_token(Settings.from_env("cli", stack.env), sub="officer-ortiz",
                                      role="officer", agency=demo.AGENCY, ttl_seconds=-120)
    page.context.add_cookies([{**cookie, "value": signer.dumps(session)}])  # type: ignore
    page.get_by_role("button", name="Send referral").click()
    page.wait_for_url(re.compile(r".*/signin\?next=/referrals/new$"))
    expect(page.get_by_text("Your session ended")).to_be_visible()
    check_page(page, "13a-session-expired")
    page.locator("button[data-role=officer]").click()
    page.wait_for_url(re.compile(r".*/referrals/new$"))
    expect(page.locator("#f-subject-given_name")).to_have_value("Draftkeeper")
    expect(page.locator("#f-updates-full")).to_be_checked()
    expect(page.locator("#f-contact-sms")).to_be_checked()
    page.get_by_role("button", name=re.compile("^Sign out")).click()
    page.wait_for_url(re.compile(r".*/signin\?bye=1$"))
    expect(page.get_by_text("You are signed out.")).to_be_visible()
    keys = page.evaluate("Object.keys(sessionStorage)")
    assert "draft:referral" not in keys, keys  # the draft leaves with the user
