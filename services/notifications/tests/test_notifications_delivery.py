"""Delivery log and dispatcher against real PostgreSQL, a real local HTTP receiver and a real
in-process SMTP server (aiosmtpd): webhooks, e-mail, retries, failures, admin retry."""
from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from notifications_fixtures import ORG, envelope, offer, status_changed
from notifications_servers import self_signed_cert, smtp_server, webhook_receiver
from sqlalchemy import select

from notifications import bootstrap, channels, config, dispatch, handlers
from notifications.tables import deliveries, delivery_attempts, metadata
from servicekit import events
from servicekit.auth import mint_dev_token
from servicekit.db import Database, run_migrations
from servicekit.settings import Settings
from servicekit.testing import wait_for

pytestmark = pytest.mark.integration
STATUS = events.REFERRAL_STATUS_CHANGED
FAST = {"WEBHOOK_ALLOW_HTTP": "1", "WEBHOOK_ALLOW_PRIVATE_TARGETS": "1",
        "DELIVERY_BACKOFF_S": "0.05", "DELIVERY_BACKOFF_MAX_S": "0.2",
        "DELIVERY_MAX_ATTEMPTS": "3", "WEBHOOK_TIMEOUT_S": "0.5",
        "PUBLIC_BASE_URL": "https://console.example.org"}


@pytest.fixture
def build(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., tuple[Settings,
                                                                                    Database]]]:
    made: list[Database] = []

    def _build(**overrides: str) -> tuple[Settings, Database]:
        settings = make_settings("notifications", **{**FAST, **overrides})
        run_migrations(settings.database_url, bootstrap.MIGRATIONS)
        db = Database(settings.database_url, metadata)
        made.append(db)
        return settings, db

    yield _build
    for db in made:
        db.dispose()


def _auth(settings: Settings, role: str = "provider", sub: str | None = None,
          **claims: str) -> dict[str, str]:
    token = mint_dev_token(settings, sub=sub or f"{role}-{uuid.uuid4().hex[:6]}", role=role,
                           **claims)
    return {"Authorization": f"Bearer {token}"}


def _offer_event() -> events.Envelope:
    return envelope(STATUS, status_changed(to_status="offered", offer_=offer(org=ORG)))


def _handle(db: Database, env: events.Envelope, settings: Settings) -> None:
    with db.transaction() as session:
        handlers.on_referral_event(session, env, config.options(settings))


def _deliveries(db: Database) -> list[Any]:
    with db.engine.connect() as conn:
        return list(conn.execute(select(deliveries).order_by(deliveries.c.created_at)))


def _attempts(db: Database, delivery_id: str) -> list[Any]:
    with db.engine.connect() as conn:
        return list(conn.execute(select(delivery_attempts).where(
            delivery_attempts.c.delivery_id == delivery_id).order_by(delivery_attempts.c.attempt)))


def _register(client: FlaskClient, settings: Settings, url: str) -> dict[str, Any]:
    resp = client.post("/v1/webhooks", json={"url": url}, headers=_auth(settings, org=ORG))
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()  # type: ignore[no-any-return]


def _dispatch_until(settings: Settings, db: Database, done: Callable[[], bool]) -> None:
    dispatcher = bootstrap.dispatcher(settings, db)
    wait_for(lambda: dispatcher.run_once() >= 0 and done(), timeout=20,
             message="deliveries to settle")


def test_offer_is_posted_to_the_org_webhook_signed_over_timestamp_and_body(build: Any) -> None:
    settings, db = build()
    client = bootstrap.create_app(settings).test_client()
    with webhook_receiver() as receiver:
        hook = _register(client, settings, receiver.url)
        env = _offer_event()
        _handle(db, env, settings)
        _handle(db, env, settings)  # redelivered: still one delivery
        (row,) = _deliveries(db)
        assert (row.channel, row.target_kind, row.target_id, row.status) == (
            "webhook", "webhook", hook["id"], "pending")
        _dispatch_until(settings, db, lambda: _deliveries(db)[0].status == "sent")
    (got,) = receiver.received
    ts, sig = got.headers[channels.TIMESTAMP_HEADER], got.headers[channels.SIGNATURE_HEADER]
    assert channels.verify(hook["secret"], ts, got.body, sig)
    assert not channels.verify(hook["secret"], str(int(ts) - 3600), got.body,
                               channels.sign(hook["secret"], str(int(ts) - 3600), got.body))
    assert not channels.verify("whsec_wrong", ts, got.body, sig)
    note = json.loads(got.body)["notification"]
    assert note["kind"] == "offer_made" and note["short_id"] == "R-7F3K"
    assert note["link"] == f"https://console.example.org/referrals/{env.subject}"
    assert got.headers[channels.DELIVERY_HEADER] == row.id
    (attempt,) = _attempts(db, row.id)
    assert (attempt.attempt, attempt.status, attempt.status_code) == (1, "sent", 200)


def test_5xx_and_timeouts_are_retried_with_backoff_until_the_receiver_answers(build: Any
                                                                               ) -> None:
    settings, db = build(DELIVERY_MAX_ATTEMPTS="4")
    client = bootstrap.create_app(settings).test_client()
    with webhook_receiver(script=[503, 500]) as receiver:
        _register(client, settings, receiver.url)
        _handle(db, _offer_event(), settings)
        _dispatch_until(settings, db, lambda: _deliveries(db)[0].status == "sent")
    (row,) = _deliveries(db)
    steps = _attempts(db, row.id)
    assert [(a.status, a.status_code) for a in steps] == [("retry", 503), ("retry", 500),
                                                          ("sent", 200)]
    assert all(a.next_attempt_at is not None and a.next_attempt_at > a.attempted_at
               for a in steps[:2])
    assert steps[-1].next_attempt_at is None and row.attempt == 3


def test_a_receiver_that_times_out_every_time_ends_failed_after_n_attempts(build: Any) -> None:
    settings, db = build(WEBHOOK_TIMEOUT_S="0.2")
    client = bootstrap.create_app(settings).test_client()
    with webhook_receiver() as receiver:
        receiver.delay_s = 1.0
        _register(client, settings, receiver.url)
        _handle(db, _offer_event(), settings)
        _dispatch_until(settings, db, lambda: _deliveries(db)[0].status == "failed")
    (row,) = _deliveries(db)
    assert [(a.status, a.error) for a in _attempts(db, row.id)] == [
        ("retry", "timeout"), ("retry", "timeout"), ("failed", "timeout")]
    assert row.attempt == 3 and row.next_attempt_at is None


def test_4xx_fails_at_once_is_listed_for_admins_and_a_manual_retry_sends_it(build: Any
                                                                           ) -> None:
    settings, db = build()
    client = bootstrap.create_app(settings).test_client()
    admin = _auth(settings, role="admin")
    with webhook_receiver(script=[410]) as receiver:
        _register(client, settings, receiver.url)
        _handle(db, _offer_event(), settings)
        _dispatch_until(settings, db, lambda: _deliveries(db)[0].status == "failed")
        (row,) = _deliveries(db)
        assert (row.attempt, row.last_status_code, row.error) == (1, 410, "HTTP 410")
        failed = client.get("/v1/deliveries?status=failed", headers=admin)
        assert failed.status_code == 200
        assert [d["id"] for d in failed.get_json()["items"]] == [row.id]
        assert client.get("/v1/deliveries?status=failed",
                          headers=_auth(settings, org=ORG)).status_code == 403
        assert client.get("/v1/deliveries?status=lost", headers=admin).status_code == 422
        retried = client.post(f"/v1/deliveries/{row.id}/retry", headers=admin)
        assert retried.status_code == 202 and retried.get_json()["status"] == "pending"
        assert client.post(f"/v1/deliveries/{row.id}/retry", headers=admin).status_code == 409
        _dispatch_until(settings, db, lambda: _deliveries(db)[0].status == "sent")
    detail = client.get(f"/v1/deliveries/{row.id}", headers=admin).get_json()
    assert [(a["attempt"], a["status"], a["status_code"]) for a in detail["attempts"]] == [
        (1, "failed", 410), (2, "sent", 200)]
    assert client.get(f"/v1/deliveries/{uuid.uuid4()}/retry", headers=admin).status_code in (
        404, 405)
    assert client.post(f"/v1/deliveries/{uuid.uuid4()}/retry", headers=admin).status_code == 404


def test_webhook_registration_shows_the_secret_once_and_validates_the_url(build: Any) -> None:
    settings, db = build(WEBHOOK_ALLOW_HTTP="0", WEBHOOK_ALLOW_PRIVATE_TARGETS="0")
    client = bootstrap.create_app(settings).test_client()
    provider = _auth(settings, org=ORG)
    for url, field_problem in [("ftp://hooks.example.org/x", "scheme"),
                               ("http://hooks.example.org/x", "scheme"),
                               ("https://user:pw@hooks.example.org/x", "credentials"),
                               ("https://127.0.0.1/x", "private"),
                               ("https://10.1.2.3/x", "private"),
                               ("https://[::1]/x", "private"),
                               ("https://169.254.169.254/latest", "private"),
                               ("https:///nohost", "host")]:
        resp = client.post("/v1/webhooks", json={"url": url}, headers=provider)
        assert resp.status_code == 422, url
        assert resp.mimetype == "application/problem+json"
        assert "url" in resp.get_json()["errors"] and field_problem in resp.get_json()["detail"]
    other_org = client.post("/v1/webhooks", json={"url": "https://8.8.8.8/x",
                                                  "organization_id": "org-other"},
                            headers=provider)
    assert other_org.status_code == 403
    created = client.post("/v1/webhooks", json={"url": "https://8.8.8.8/hook"}, headers=provider)
    assert created.status_code == 201 and created.get_json()["secret"].startswith("whsec_")
    listed = client.get("/v1/webhooks", headers=provider).get_json()["items"]
    assert [h["id"] for h in listed] == [created.get_json()["id"]]
    assert "secret" not in listed[0]
    again = client.post("/v1/webhooks", json={"url": "https://8.8.8.8/hook"}, headers=provider)
    assert again.status_code == 200 and again.get_json()["id"] == created.get_json()["id"]
    assert again.get_json()["secret"] != created.get_json()["secret"]  # re-issued, one hook
    admin_without_org = client.post("/v1/webhooks", json={"url": "https://8.8.8.8/hook"},
                                    headers=_auth(settings, role="admin"))
    assert admin_without_org.status_code == 422
    unknown = client.post("/v1/webhooks", json={"url": "https://8.8.8.8/h", "colour": "red"},
                          headers=provider)
    assert unknown.status_code == 422
    gone = client.delete(f"/v1/webhooks/{created.get_json()['id']}", headers=provider)
    assert gone.status_code == 204
    _handle(db, _offer_event(), settings)
    assert _deliveries(db) == []  # an inactive webhook gets nothing


def test_webhook_to_a_private_target_is_refused_at_send_time_too(build: Any) -> None:
    """Registered while private targets were allowed, sent after they no longer are."""
    settings, db = build()
    client = bootstrap.create_app(settings).test_client()
    with webhook_receiver() as receiver:
        _register(client, settings, receiver.url)
        _handle(db, _offer_event(), settings)
        strict, _ = build(WEBHOOK_ALLOW_PRIVATE_TARGETS="0")
        dispatcher = bootstrap.dispatcher(strict, db)
        wait_for(lambda: dispatcher.run_once() >= 0 and _deliveries(db)[0].status == "failed",
                 timeout=10)
        assert receiver.received == []
    assert "private" in (_deliveries(db)[0].error or "")


def _email_prefs(client: FlaskClient, settings: Settings, address: str) -> None:
    resp = client.put("/v1/preferences", json={"channels": ["in_app", "email"],
                                               "email": address},
                      headers=_auth(settings, sub="staff-1", org=ORG))
    assert resp.status_code == 200, resp.get_json()


def test_offer_is_emailed_to_staff_who_chose_email_over_plain_smtp(build: Any) -> None:
    with smtp_server() as (mailbox, port):
        settings, db = build(SMTP_HOST="127.0.0.1", SMTP_PORT=str(port))
        client = bootstrap.create_app(settings).test_client()
        _email_prefs(client, settings, "intake@harbor.example.org")
        env = _offer_event()
        _handle(db, env, settings)
        (row,) = _deliveries(db)
        assert (row.channel, row.target_id) == ("email", "staff-1")
        _dispatch_until(settings, db, lambda: _deliveries(db)[0].status == "sent")
    (mail,) = mailbox.messages
    assert mail["to"] == ["intake@harbor.example.org"] and mail["tls"] is False
    text = mail["content"].decode()
    assert "Subject: New urgent housing referral R-7F3K" in text
    assert f"https://console.example.org/referrals/{env.subject}" in text


def test_email_over_starttls_with_auth_and_a_private_ca(build: Any, tmp_path: Path) -> None:
    cert = self_signed_cert(tmp_path)
    with smtp_server(starttls_cert=cert, login=("notify", "s3cret")) as (mailbox, port):
        settings, db = build(SMTP_HOST="localhost", SMTP_PORT=str(port),
                             SMTP_SECURITY="starttls", SMTP_USERNAME="notify",
                             SMTP_PASSWORD="s3cret", SMTP_CA_FILE=str(cert[0]))
        client = bootstrap.create_app(settings).test_client()
        _email_prefs(client, settings, "intake@harbor.example.org")
        _handle(db, _offer_event(), settings)
        _dispatch_until(settings, db, lambda: _deliveries(db)[0].status == "sent")
    (mail,) = mailbox.messages
    assert mail["tls"] is True and mail["authenticated"] is True


def test_smtp_5xx_fails_and_an_unreachable_server_is_retried(build: Any) -> None:
    with smtp_server() as (mailbox, port):
        mailbox.reject = 554
        settings, db = build(SMTP_HOST="127.0.0.1", SMTP_PORT=str(port))
        client = bootstrap.create_app(settings).test_client()
        _email_prefs(client, settings, "intake@harbor.example.org")
        _handle(db, _offer_event(), settings)
        _dispatch_until(settings, db, lambda: _deliveries(db)[0].status == "failed")
        assert (_deliveries(db)[0].attempt, _deliveries(db)[0].last_status_code) == (1, 554)
    down, db2 = build(SMTP_HOST="127.0.0.1", SMTP_PORT=str(port))  # server stopped now
    client = bootstrap.create_app(down).test_client()
    _email_prefs(client, down, "intake@harbor.example.org")
    _handle(db2, _offer_event(), down)
    _dispatch_until(down, db2, lambda: _deliveries(db2)[0].status == "failed")
    assert [a.status for a in _attempts(db2, _deliveries(db2)[0].id)] == [
        "retry", "retry", "failed"]


def test_email_over_implicit_tls(build: Any, tmp_path: Path) -> None:
    cert = self_signed_cert(tmp_path)
    with smtp_server(implicit_tls_cert=cert) as (mailbox, port):
        settings, db = build(SMTP_HOST="localhost", SMTP_PORT=str(port), SMTP_SECURITY="tls",
                             SMTP_CA_FILE=str(cert[0]))
        client = bootstrap.create_app(settings).test_client()
        _email_prefs(client, settings, "intake@harbor.example.org")
        _handle(db, _offer_event(), settings)
        _dispatch_until(settings, db, lambda: _deliveries(db)[0].status == "sent")
    (mail,) = mailbox.messages
    assert mail["tls"] is True


class _FakeSms(channels.NoSms):
    """An SMS vendor adapter double (subclasses the real default, as the kit's tests do)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, to: str, text: str) -> None:
        self.sent.append((to, text))


def test_sms_goes_through_the_adapter_only_when_enabled(build: Any) -> None:
    settings, db = build(SMS_ENABLED="1")
    client = bootstrap.create_app(settings).test_client()
    resp = client.put("/v1/preferences", json={"channels": ["in_app", "sms"],
                                               "sms_number": "+12065550100"},
                      headers=_auth(settings, sub="staff-1", org=ORG))
    assert resp.status_code == 200, resp.get_json()
    _handle(db, _offer_event(), settings)
    sms = _FakeSms()
    dispatcher = dispatch.Dispatcher(db, config.dispatch_config(settings),
                                     webhook=config.webhook_sender(settings), sms=sms)
    wait_for(lambda: dispatcher.run_once() >= 0 and _deliveries(db)[0].status == "sent",
             timeout=10)
    ((to, text),) = sms.sent
    assert to == "+12065550100" and "R-7F3K" in text and "https://console.example.org" in text
    off, db_off = build()  # SMS_ENABLED=0: the same preferences make no SMS delivery
    bootstrap.create_app(off).test_client().put(
        "/v1/preferences", json={"channels": ["in_app"]},
        headers=_auth(off, sub="staff-1", org=ORG))
    _handle(db_off, _offer_event(), off)
    assert _deliveries(db_off) == []
