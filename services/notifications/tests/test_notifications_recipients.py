"""Recipients over time against real PostgreSQL: reminders, repeated refusals, preferences,
consent changes and erasure."""
from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from notifications_fixtures import AGENCY, ORG, envelope, offer, status_changed
from sqlalchemy import select

from notifications import bootstrap, config, handlers
from notifications.tables import deliveries, metadata, notifications, offer_reminders
from servicekit import crypto, events
from servicekit.auth import mint_dev_token
from servicekit.db import Database, run_migrations
from servicekit.settings import Settings

pytestmark = pytest.mark.integration
STATUS = events.REFERRAL_STATUS_CHANGED
OFFERED_AT = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    built = make_settings("notifications", SMTP_HOST="127.0.0.1",
                          WEBHOOK_ALLOW_HTTP="1", WEBHOOK_ALLOW_PRIVATE_TARGETS="1")
    run_migrations(built.database_url, bootstrap.MIGRATIONS)
    return built


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.database_url, metadata)
    yield database
    database.dispose()


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    return bootstrap.create_app(settings).test_client()


def _auth(settings: Settings, role: str = "provider", sub: str = "staff-1",
          **claims: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_dev_token(settings, sub=sub, role=role, **claims)}"}


def _handle(db: Database, settings: Settings, env: events.Envelope,
            handler: Any = None) -> None:
    with db.transaction() as session:
        if handler is None:
            handlers.on_referral_event(session, env, config.options(settings))
        else:
            handler(session, env)


def _rows(db: Database, **where: str) -> list[Any]:
    with db.engine.connect() as conn:
        return list(conn.execute(select(notifications).where(
            *[notifications.c[k] == v for k, v in where.items()])))


def _offered(rid: str | None = None, hours: int = 4, sequence: int = 1,
             **kw: Any) -> events.Envelope:
    o = offer(expires_at=events.format_time(OFFERED_AT + timedelta(hours=hours)), **kw)
    return envelope(STATUS, status_changed(rid, to_status="offered", offer_=o), sequence)


def _reminders(db: Database, at: datetime) -> int:
    with db.transaction() as session:
        return handlers.send_due_reminders(session, now=at)


def test_open_offer_gets_one_reminder_at_75_percent_of_its_window(db: Database,
                                                                 settings: Settings) -> None:
    env = _offered()
    _handle(db, settings, env)
    assert _reminders(db, OFFERED_AT + timedelta(hours=2, minutes=59)) == 0
    assert _reminders(db, OFFERED_AT + timedelta(hours=3)) == 1
    assert _reminders(db, OFFERED_AT + timedelta(hours=3, minutes=30)) == 0  # once only
    (reminder,) = _rows(db, referral_id=env.subject, kind="offer_reminder")
    assert (reminder.recipient_kind, reminder.recipient_id) == ("org", ORG)
    assert "expires at 18:00 UTC" in reminder.body


def test_an_answered_offer_is_not_reminded(db: Database, settings: Settings) -> None:
    env = _offered()
    o = env.data["offer"]
    _handle(db, settings, env)
    accepted = status_changed(env.subject, from_status="offered", to_status="accepted",
                              offer_={**o, "status": "accepted"})
    _handle(db, settings, envelope(STATUS, accepted, 2))
    assert _reminders(db, OFFERED_AT + timedelta(hours=3, minutes=1)) == 0
    assert _rows(db, referral_id=env.subject, kind="offer_reminder") == []
    with db.engine.connect() as conn:
        assert conn.execute(select(offer_reminders.c.status)).scalar_one() == "cancelled"


def test_third_decline_or_expiry_of_one_referral_alerts_its_supervisors_once(
        db: Database, settings: Settings) -> None:
    rid = str(uuid.uuid4())
    outcomes = ["declined", "expired", "declined", "declined"]
    for seq, status in enumerate(outcomes, start=1):
        data = status_changed(rid, from_status="offered", to_status="submitted",
                              offer_=offer(status=status),
                              reason_code="no_capacity" if status == "declined" else "expired")
        env = envelope(STATUS, data, seq)
        _handle(db, settings, env)
        _handle(db, settings, env)  # redelivery changes nothing
    (alert,) = _rows(db, referral_id=rid, kind="repeated_refusals")
    assert (alert.recipient_kind, alert.recipient_id) == ("agency_supervisors", AGENCY)
    assert "3 times" in alert.body


def test_provider_who_opts_out_of_in_app_still_sees_offers_but_not_the_rest(
        db: Database, settings: Settings, client: FlaskClient) -> None:
    headers = _auth(settings, org=ORG)
    bad = client.put("/v1/preferences", json={"channels": ["email"]}, headers=headers)
    assert bad.status_code == 422 and "email" in bad.get_json()["errors"]
    sms = client.put("/v1/preferences", json={"channels": ["sms"], "sms_number": "+12065550100"},
                     headers=headers)
    assert sms.status_code == 422 and "channels" in sms.get_json()["errors"]  # SMS off
    ok = client.put("/v1/preferences", json={"channels": ["email"],
                                             "email": "desk@harbor.example.org"},
                    headers=headers)
    assert ok.status_code == 200 and ok.get_json()["channels"] == ["email"]
    env = _offered()
    _handle(db, settings, env)
    withdrawn = status_changed(env.subject, from_status="offered", to_status="submitted",
                               offer_={**env.data["offer"], "status": "withdrawn"},
                               reason_code="withdrawn")
    _handle(db, settings, envelope(STATUS, withdrawn, 2))
    kinds = [i["kind"] for i in client.get("/v1/notifications", headers=headers)
             .get_json()["items"]]
    assert kinds == ["offer_made"]
    colleague = client.get("/v1/notifications", headers=_auth(settings, sub="staff-2", org=ORG))
    assert sorted(i["kind"] for i in colleague.get_json()["items"]) == [
        "offer_made", "offer_withdrawn"]
    with db.engine.connect() as conn:
        emailed = conn.execute(select(deliveries.c.channel, deliveries.c.target_id)).all()
    assert sorted(emailed) == [("email", "staff-1"), ("email", "staff-1")]


def test_consent_change_applies_to_officer_notifications_produced_after_it(
        db: Database, settings: Settings, client: FlaskClient) -> None:
    ref = crypto.officer_pseudonym(crypto.load_pseudonym_key(settings), "officer-ortiz")
    officer = _auth(settings, role="officer", sub="officer-ortiz", agency=AGENCY)
    assert client.put("/v1/preferences", json={"channels": ["in_app", "email"],
                                               "email": "ortiz@metro-pd.example.org"},
                      headers=officer).status_code == 200
    rid = str(uuid.uuid4())

    def change(seq: int, to: str, updates: str, o: dict[str, Any] | None = None) -> None:
        data = status_changed(rid, from_status=None if seq == 1 else "offered", to_status=to,
                              offer_=o, referrer_updates=updates)
        _handle(db, settings, envelope(STATUS, {**data, "officer_ref": ref}, seq))

    def consent(seq: int, updates: str) -> None:
        _handle(db, settings, envelope(events.REFERRAL_CONSENT_CHANGED, {
            "referral_id": rid, "actor_role": "officer", "occurred_at": "2026-03-03T00:00:00Z",
            "consent": {"share_with_provider": True, "referrer_updates": updates,
                        "contact_methods": []}}, seq), handlers.on_consent_changed)

    change(1, "offered", "full", offer())
    consent(2, "milestones")  # narrowing: what was said stays; later ones are milestones
    change(3, "accepted", "milestones", offer(status="accepted"))
    feed = client.get("/v1/notifications", headers=officer).get_json()["items"]
    assert [i["body"].split(": ", 1)[1] for i in feed] == ["connected with a service",
                                                           "now offered"]
    with db.engine.connect() as conn:
        assert conn.execute(select(deliveries)).all() != []  # e-mails were queued
    consent(4, "none")  # revocation withdraws everything, pending e-mails included
    change(5, "completed", "none")
    assert client.get("/v1/notifications", headers=officer).get_json()["total"] == 0
    with db.engine.connect() as conn:
        assert conn.execute(select(deliveries)).all() == []


def test_erasure_purges_text_cancels_pending_deliveries_and_blanks_later_events(
        db: Database, settings: Settings, client: FlaskClient) -> None:
    hook = client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"},
                       headers=_auth(settings, org=ORG))
    assert hook.status_code == 201
    env = _offered()
    _handle(db, settings, env)
    _handle(db, settings, envelope(events.REFERRAL_ERASED, {
        "referral_id": env.subject, "occurred_at": "2026-03-03T00:00:00Z"}, 2),
        handlers.on_referral_erased)
    (row,) = _rows(db, referral_id=env.subject)
    assert (row.title, row.body) == (None, None)
    with db.engine.connect() as conn:
        assert conn.execute(select(deliveries.c.status)).scalars().all() == ["cancelled"]
    late = status_changed(env.subject, from_status="offered", to_status="cancelled",
                          offer_={**env.data["offer"], "status": "withdrawn"})
    _handle(db, settings, envelope(STATUS, late, 3))
    assert [(r.kind, r.title, r.body) for r in _rows(db, referral_id=env.subject,
                                                     kind="referral_cancelled")] == [
        ("referral_cancelled", None, None)]
    with db.engine.connect() as conn:
        assert len(conn.execute(select(deliveries)).all()) == 1  # nothing new to send
    assert _reminders(db, OFFERED_AT + timedelta(hours=3, minutes=1)) == 0
