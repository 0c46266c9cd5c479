"""Canary PII through a real referral flow (referral-intake's API and event handlers in
process, its outbox events fed to notifications), then every channel delivered for real
(local webhook receiver, aiosmtpd): the canary is in no notification row, delivery log,
e-mail, webhook body or log line. Malformed events go to the dead-letter topic."""
from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from notifications_fixtures import envelope, offer, status_changed
from notifications_servers import smtp_server, webhook_receiver
from sqlalchemy import select, text

from notifications import bootstrap, config, consumers
from notifications.tables import deliveries, delivery_attempts, metadata, notifications
from referral_intake import bootstrap as intake_bootstrap
from referral_intake import handlers as intake_handlers
from servicekit import events, inbox, logs
from servicekit import kafka as kafkakit
from servicekit.auth import mint_dev_token
from servicekit.consumer import ConsumerRunner
from servicekit.db import Database, run_migrations
from servicekit.runtime import runner_config
from servicekit.settings import Settings
from servicekit.testing import iter_topic, wait_for

pytestmark = pytest.mark.integration

CANARY = {"given_name": "Zyxwanda", "family_name": "Quillfeatherby", "phone": "+15550199877",
          "email": "zyx.quill@canary.example", "notes": "canary-narrative-7Q4",
          "birth_date": "1987-06-05"}
ORG = str(uuid.uuid4())


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.formatter = logs.JsonFormatter("canary-test")

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _h(settings: Settings, role: str, sub: str, **claims: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_dev_token(settings, sub=sub, role=role, **claims)}


def _feed(db: Database, handlers: dict[str, Any], envs: list[events.Envelope]) -> None:
    """What the consumer runner does per event: inbox claim and handler, one transaction."""
    for env in envs:
        handler = handlers.get(env.type)
        with db.uow() as uow:
            if handler is not None and inbox.claim(uow.session, "notifications", env):
                handler(uow.session, env)
                uow.commit()


def test_canary_pii_reaches_no_notification_email_webhook_body_or_log(
        make_settings: Callable[..., Settings], capfd: pytest.CaptureFixture[str]) -> None:
    intake_settings = make_settings("referral-intake")
    run_migrations(intake_settings.database_url, intake_bootstrap.MIGRATIONS)
    intake = intake_bootstrap.create_app(intake_settings)
    ic, idb, ictx = intake.test_client(), intake.extensions["db"], intake.extensions["intake_ctx"]
    with smtp_server() as (mailbox, port), webhook_receiver() as receiver:
        settings = make_settings("notifications", SMTP_HOST="127.0.0.1", SMTP_PORT=str(port),
                                 WEBHOOK_ALLOW_HTTP="1", WEBHOOK_ALLOW_PRIVATE_TARGETS="1",
                                 DELIVERY_BACKOFF_S="0.05")
        run_migrations(settings.database_url, bootstrap.MIGRATIONS)
        app = bootstrap.create_app(settings)
        client, db = app.test_client(), Database(settings.database_url, metadata)
        captured = _Lines()
        logging.getLogger().addHandler(captured)
        try:
            provider, officer = (_h(settings, "provider", "staff-1", org=ORG),
                                 _h(settings, "officer", "officer-canary", agency="pd"))
            assert client.post("/v1/webhooks", json={"url": receiver.url},
                               headers=provider).status_code == 201
            for who, address in ((provider, "desk@provider.example.org"),
                                 (officer, "officer@pd.example.org")):
                assert client.put("/v1/preferences", headers=who, json={
                    "channels": ["in_app", "email"], "email": address}).status_code == 200
            rid = _referral_flow(ic, idb, ictx, intake_settings)
            with idb.engine.connect() as conn:
                payloads = conn.execute(text("SELECT payload FROM outbox ORDER BY id")).scalars()
                envs = [events.decode(bytes(p)) for p in payloads]
            (spec,) = consumers.consumer_specs(config.options(settings))
            _feed(db, dict(spec.handlers), envs)
            dispatcher = bootstrap.dispatcher(settings, db)
            wait_for(lambda: dispatcher.run_once() >= 0 and _all_sent(db), timeout=30,
                     message="every delivery sent")
            feed = client.get("/v1/notifications", headers=officer).get_json()
            provider_feed = client.get("/v1/notifications", headers=provider).get_json()
        finally:
            logging.getLogger().removeHandler(captured)
            db.dispose()
            idb.dispose()
    kinds = {r["kind"] for r in provider_feed["items"]}
    assert "offer_made" in kinds and feed["total"] >= 3  # officer: full updates, by pseudonym
    assert len(mailbox.messages) >= 4 and len(receiver.received) >= 1
    with Database(settings.database_url, metadata).engine.connect() as conn:
        stored = [repr(tuple(r)) for t in (notifications, deliveries, delivery_attempts)
                  for r in conn.execute(select(t))]
    haystacks = {
        "notification rows": "\n".join(stored),
        "emails": "\n".join(m["content"].decode("utf-8", "replace") for m in mailbox.messages),
        "webhook bodies": "\n".join(r.body.decode() for r in receiver.received),
        "logs": "\n".join(captured.lines) + capfd.readouterr().err,
    }
    assert rid in haystacks["notification rows"] and haystacks["logs"]  # the scan sees data
    for where, hay in haystacks.items():
        for name, value in CANARY.items():
            assert value.lower() not in hay.lower(), f"{name} found in {where}"


def _referral_flow(ic: Any, idb: Database, ictx: Any, settings: Settings) -> str:
    """Submit with canary PII, offer, accept, progress with a canary note, complete."""
    officer = _h(settings, "officer", "officer-canary", agency="pd")
    body = {"need": "housing", "urgency": "urgent", "notes": CANARY["notes"],
            "subject": {k: CANARY[k] for k in ("given_name", "family_name", "birth_date",
                                               "phone", "email")},
            "location": {"lat": 47.6101, "lon": -122.3301},
            "consent": {"share_with_provider": True, "referrer_updates": "full",
                        "contact_methods": ["phone", "email"], "obtained_via": "verbal"}}
    resp = ic.post("/v1/referrals", json=body, headers=officer)
    assert resp.status_code == 201, resp.get_json()
    rid = resp.get_json()["id"]
    proposal = events.new_event(events.ROUTING_PROPOSED, subject=rid, sequence=1,
                                source="matching", data={
                                    "referral_id": rid, "attempt": 1,
                                    "service_id": str(uuid.uuid4()), "organization_id": ORG,
                                    "score": 1.0, "reasons": [], "eliminated": {},
                                    "proposed_at": "2026-01-01T00:00:00Z"})
    with idb.transaction() as session:
        intake_handlers.on_routing_proposed(session, ictx, proposal)
    provider = _h(settings, "provider", "staff-1", org=ORG)
    for path, payload in (("accept", {}),
                          ("progress", {"status": "in_progress", "note": CANARY["notes"]}),
                          ("close", {"outcome": "completed", "outcome_code": "connected"})):
        step = ic.post(f"/v1/referrals/{rid}/{path}", json=payload, headers=provider)
        assert step.status_code == 200, (path, step.get_json())
    return str(rid)


def _all_sent(db: Database) -> bool:
    with db.engine.connect() as conn:
        statuses = conn.execute(select(deliveries.c.status)).scalars().all()
    return bool(statuses) and all(s == "sent" for s in statuses)


def test_malformed_events_go_to_the_dead_letter_topic_and_good_ones_still_notify(
        make_settings: Callable[..., Settings]) -> None:
    settings = make_settings("notifications")
    run_migrations(settings.database_url, bootstrap.MIGRATIONS)
    db = Database(settings.database_url, metadata)
    group = f"notifications-dlq-{uuid.uuid4().hex[:8]}"
    (spec,) = consumers.consumer_specs()
    kafkakit.bootstrap_topics(settings.kafka_bootstrap_servers, partitions=3)
    producer = kafkakit.make_producer(settings.kafka_bootstrap_servers)
    runner = ConsumerRunner(name=group, db=db, producer=producer,
                            consumer=kafkakit.make_consumer(settings, group),
                            topics=[events.REFERRAL_EVENTS], handlers=spec.handlers,
                            config=runner_config(settings))
    key = f"dlq-{uuid.uuid4()}".encode()
    rid = str(uuid.uuid4())
    broken = events.encode(events.new_event(events.REFERRAL_ERASED, subject=rid, sequence=1,
                                            source="referral-intake", data={
                                                "referral_id": rid,
                                                "occurred_at": "2026-03-03T00:00:00Z"}))
    broken = broken.replace(b'"occurred_at"', b'"occurred_on"')  # fails its schema
    good = envelope(events.REFERRAL_STATUS_CHANGED,
                    status_changed(to_status="offered", offer_=offer()))
    for value in (b"\xff not json", b'{"id": "nope"}', broken, events.encode(good)):
        producer.send(events.REFERRAL_EVENTS, key=key, value=value).get(30)
    stop = threading.Event()
    worker = threading.Thread(target=runner.run, args=(stop,))
    worker.start()
    try:
        dead = _wait_dead(settings, key, 3)
        wait_for(lambda: _notified(db, good.subject), timeout=60, message="good event handled")
        assert {m.value for m in dead} == {b"\xff not json", b'{"id": "nope"}', broken}
        assert all(dict(m.headers)["dlq.consumer_group"] == group.encode() for m in dead)
    finally:
        stop.set()
        worker.join(timeout=30)
        producer.close()
        db.dispose()


def _notified(db: Database, referral_id: str) -> bool:
    with db.engine.connect() as conn:
        return conn.execute(select(notifications.c.id).where(
            notifications.c.referral_id == referral_id)).first() is not None


def _wait_dead(settings: Settings, key: bytes, count: int) -> list[Any]:
    found: list[Any] = []

    def scan() -> bool:
        found[:] = [m for m in iter_topic(settings.kafka_bootstrap_servers,
                                          events.dlq_topic(events.REFERRAL_EVENTS))
                    if m.key == key]
        return len(found) >= count

    wait_for(scan, timeout=60, interval=1, message=f"{count} dead letters")
    return found
