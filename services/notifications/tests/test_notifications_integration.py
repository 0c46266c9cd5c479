"""notifications against the real PostgreSQL (and broker): handlers, deduplication, HTTP API."""
from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient
from notifications_fixtures import (
    AGENCY,
    ORG,
    OTHER_ORG,
    envelope,
    offer,
    service_upserted,
    status_changed,
)
from sqlalchemy import func, select

from notifications import bootstrap, handlers
from notifications.tables import metadata, notifications, org_view
from servicekit import crypto, events, inbox
from servicekit import kafka as kafkakit
from servicekit.auth import mint_dev_token
from servicekit.consumer import ConsumerRunner
from servicekit.db import Database, run_migrations
from servicekit.runtime import runner_config
from servicekit.settings import Settings
from servicekit.testing import wait_for

pytestmark = pytest.mark.integration

STATUS = events.REFERRAL_STATUS_CHANGED


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    built = make_settings("notifications")
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


def _auth(settings: Settings, role: str = "provider", **claims: str) -> dict[str, str]:
    token = mint_dev_token(settings, sub=f"{role}-{uuid.uuid4().hex[:6]}", role=role, **claims)
    return {"Authorization": f"Bearer {token}"}


def _offered(referral_id: str | None = None, org: str = ORG, sequence: int = 1
             ) -> events.Envelope:
    data = status_changed(referral_id, to_status="offered", offer_=offer(org=org))
    return envelope(STATUS, data, sequence=sequence)


def _handle(db: Database, env: events.Envelope, handler: Any = handlers.on_referral_event
            ) -> None:
    with db.transaction() as session:
        handler(session, env)


def _consume(db: Database, env: events.Envelope) -> bool:
    """What the consumer runner does: claim in the inbox and handle in one transaction."""
    with db.uow() as uow:
        if not inbox.claim(uow.session, "notifications", env):
            uow.rollback()
            return False
        handlers.on_referral_event(uow.session, env)
        uow.commit()
    return True


def _rows(db: Database, **where: str) -> list[Any]:
    cond = [notifications.c[k] == v for k, v in where.items()]
    with db.engine.connect() as conn:
        return list(conn.execute(select(notifications).where(*cond)))


def test_offered_status_change_creates_one_notification_for_the_org(db: Database) -> None:
    env = _offered()
    _handle(db, env)
    rows = _rows(db, referral_id=env.subject)
    assert [(r.recipient_kind, r.recipient_id, r.kind, r.channel) for r in rows] == [
        ("org", ORG, "offer_made", "in_app")]
    assert rows[0].event_id == env.id and rows[0].read_at is None
    assert "R-7F3K" in rows[0].body and "respond by 14:30 UTC" in rows[0].body


def test_event_redelivered_through_the_inbox_creates_one_notification(db: Database) -> None:
    env = _offered()
    assert _consume(db, env) is True
    assert _consume(db, env) is False
    assert len(_rows(db, referral_id=env.subject)) == 1


def test_handler_run_twice_for_one_event_keeps_one_notification(db: Database) -> None:
    """Even without the inbox, the unique (event, recipient, channel) key holds."""
    env = _offered()
    _handle(db, env)
    _handle(db, env)
    assert len(_rows(db, referral_id=env.subject)) == 1


def test_provider_feed_lists_own_org_notifications_and_another_org_sees_nothing(
        db: Database, client: FlaskClient, settings: Settings) -> None:
    env = _offered()
    _handle(db, env)
    mine = client.get("/v1/notifications", headers=_auth(settings, org=ORG))
    assert mine.status_code == 200
    body = mine.get_json()
    assert body["total"] == 1
    (item,) = body["items"]
    assert (item["referral_id"], item["kind"], item["read_at"]) == (env.subject, "offer_made",
                                                                    None)
    assert item["link"] == f"/referrals/{env.subject}"
    theirs = client.get("/v1/notifications", headers=_auth(settings, org=OTHER_ORG))
    assert theirs.status_code == 200
    assert theirs.get_json()["items"] == [] and theirs.get_json()["total"] == 0


def test_mark_read_works_for_the_owner_and_is_404_for_anyone_else(
        db: Database, client: FlaskClient, settings: Settings) -> None:
    env = _offered()
    _handle(db, env)
    (row,) = _rows(db, referral_id=env.subject)
    other = client.post(f"/v1/notifications/{row.id}/read",
                        headers=_auth(settings, org=OTHER_ORG))
    assert other.status_code == 404
    assert other.mimetype == "application/problem+json"
    assert _rows(db, id=row.id)[0].read_at is None
    owner = _auth(settings, org=ORG)
    done = client.post(f"/v1/notifications/{row.id}/read", headers=owner)
    assert done.status_code == 204 and done.data == b""
    first_read = _rows(db, id=row.id)[0].read_at
    assert first_read is not None
    assert client.post(f"/v1/notifications/{row.id}/read", headers=owner).status_code == 204
    assert _rows(db, id=row.id)[0].read_at == first_read  # idempotent: first read kept
    unread = client.get("/v1/notifications?unread=true", headers=owner).get_json()
    assert unread["total"] == 0
    everything = client.get("/v1/notifications?unread=false", headers=owner).get_json()
    assert everything["total"] == 1


def test_unknown_notification_and_unknown_query_field_are_refused(
        client: FlaskClient, settings: Settings) -> None:
    headers = _auth(settings, org=ORG)
    missing = client.post(f"/v1/notifications/{uuid.uuid4()}/read", headers=headers)
    assert missing.status_code == 404
    bad = client.get("/v1/notifications?colour=red", headers=headers)
    assert bad.status_code == 422
    assert client.get("/v1/notifications").status_code == 401
    admin = client.get("/v1/notifications", headers=_auth(settings, role="admin"))
    assert admin.status_code == 403


def test_supervisor_feed_shows_their_agency_unmatched_referrals(
        db: Database, client: FlaskClient, settings: Settings) -> None:
    data = status_changed(from_status="submitted", to_status="unmatched")
    _handle(db, envelope(STATUS, data))
    own = client.get("/v1/notifications",
                     headers=_auth(settings, role="supervisor", agency=AGENCY)).get_json()
    assert [i["kind"] for i in own["items"]] == ["unmatched"]
    other = client.get("/v1/notifications",
                       headers=_auth(settings, role="supervisor", agency="agency-x")).get_json()
    assert other["total"] == 0


def test_officer_reads_the_notifications_addressed_to_their_pseudonym(
        db: Database, client: FlaskClient, settings: Settings) -> None:
    """referral-intake stamps officer_ref = officer_pseudonym(PSEUDONYM_KEY, sub); the
    feed derives the same value from the officer's token, and no other officer's."""
    key = crypto.load_pseudonym_key(settings)
    mine = crypto.officer_pseudonym(key, "officer-ortiz")
    data = status_changed(from_status="offered", to_status="accepted",
                          offer_=offer(status="accepted"), referrer_updates="full")
    _handle(db, envelope(STATUS, {**data, "officer_ref": mine}))
    token = mint_dev_token(settings, sub="officer-ortiz", role="officer", agency=AGENCY)
    feed = client.get("/v1/notifications", headers={"Authorization": f"Bearer {token}"})
    assert feed.status_code == 200
    (item,) = feed.get_json()["items"]
    assert item["kind"] == "milestone" and item["body"].endswith("now accepted")
    other = client.get("/v1/notifications",
                       headers=_auth(settings, role="officer", agency=AGENCY)).get_json()
    assert other["total"] == 0


def test_erasure_removes_the_stored_text_of_the_referrals_notifications(db: Database) -> None:
    env, kept = _offered(), _offered()
    _handle(db, env)
    _handle(db, kept)
    erased = envelope(events.REFERRAL_ERASED,
                      {"referral_id": env.subject, "occurred_at": "2026-03-03T00:00:00Z"},
                      sequence=2)
    _handle(db, erased, handlers.on_referral_erased)
    (row,) = _rows(db, referral_id=env.subject)
    assert (row.title, row.body) == (None, None)
    assert _rows(db, referral_id=kept.subject)[0].body is not None


def test_revoking_referrer_updates_withdraws_the_officers_notifications(db: Database) -> None:
    offered = _offered()
    rid = offered.subject
    accepted = status_changed(rid, from_status="offered", to_status="accepted",
                              offer_=offer(status="accepted"), referrer_updates="full")
    _handle(db, offered)
    _handle(db, envelope(STATUS, accepted, sequence=2))

    def consent(updates: str, sequence: int) -> events.Envelope:
        return envelope(events.REFERRAL_CONSENT_CHANGED, {
            "referral_id": rid, "actor_role": "officer", "occurred_at": "2026-03-03T00:00:00Z",
            "consent": {"share_with_provider": True, "referrer_updates": updates,
                        "contact_methods": []}}, sequence=sequence)

    _handle(db, consent("milestones", 3), handlers.on_consent_changed)
    assert len(_rows(db, referral_id=rid, recipient_kind="user")) == 1  # "now accepted"
    _handle(db, consent("none", 4), handlers.on_consent_changed)
    assert _rows(db, referral_id=rid, recipient_kind="user") == []
    assert len(_rows(db, referral_id=rid, recipient_kind="org")) == 1  # the offer stays


def test_org_view_keeps_the_newest_channels_of_an_organization(db: Database) -> None:
    newer = service_upserted(ORG, ["webhook", "in_app"], "2026-03-02T10:00:00Z")
    older = service_upserted(ORG, ["email"], "2026-03-01T10:00:00Z")
    for env in (newer, older):
        _handle(db, env, handlers.on_service_upserted)
    with db.engine.connect() as conn:
        rows = list(conn.execute(select(org_view)))
        count = conn.execute(select(func.count()).select_from(org_view)).scalar_one()
    assert count == 1
    assert rows[0].channels == ["in_app", "webhook"]


def test_worker_consumes_referral_and_provider_events_without_a_relay(settings: Settings
                                                                      ) -> None:
    database, spec = bootstrap.worker(settings)
    database.dispose()
    assert spec.relay is False
    assert [getattr(t, "__name__", "") for t in spec.timers] == ["run_forever", "offer_reminders"]
    (consumer,) = spec.consumers
    assert consumer.name == "notifications"
    assert set(consumer.topics) == {events.REFERRAL_EVENTS, events.PROVIDER_EVENTS}
    assert {events.REFERRAL_STATUS_CHANGED, events.REFERRAL_SLA_BREACHED,
            events.REFERRAL_ERASED, events.PROVIDER_SERVICE_UPSERTED} <= set(consumer.handlers)


def test_worker_turns_an_offer_on_the_broker_into_one_notification_despite_redelivery(
        settings: Settings) -> None:
    """The real consumer runner with the worker's handlers; the event is published twice."""
    database, spec = bootstrap.worker(settings)
    group = f"notifications-test-{uuid.uuid4().hex[:8]}"  # isolated from other runs
    spec = dataclasses.replace(spec, consumers=[
        dataclasses.replace(c, name=group) for c in spec.consumers])
    (consumer,) = spec.consumers
    kafkakit.bootstrap_topics(settings.kafka_bootstrap_servers, partitions=3)
    producer = kafkakit.make_producer(settings.kafka_bootstrap_servers)
    runner = ConsumerRunner(name=consumer.name, db=database, producer=producer,
                            consumer=kafkakit.make_consumer(settings, consumer.name),
                            topics=consumer.topics, handlers=consumer.handlers,
                            config=runner_config(settings))
    env = _offered()
    for _ in range(2):
        producer.send(events.REFERRAL_EVENTS, key=env.key, value=events.encode(env)).get(30)
    stop = threading.Event()
    worker = threading.Thread(target=runner.run, args=(stop,))
    worker.start()
    try:
        wait_for(lambda: _rows(database, referral_id=env.subject), timeout=60,
                 message="notification from the broker")
        marker = _offered()  # published after the duplicate on the same partition key ...
        producer.send(events.REFERRAL_EVENTS, key=env.key, value=events.encode(marker)).get(30)
        wait_for(lambda: _rows(database, referral_id=marker.subject), timeout=60,
                 message="marker notification")  # ... so the duplicate was handled by now
        assert len(_rows(database, referral_id=env.subject)) == 1
    finally:
        stop.set()
        worker.join(timeout=30)
        producer.close()
        database.dispose()


def test_openapi_documents_the_feed_and_mark_read(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    assert "get" in spec["paths"]["/v1/notifications"]
    assert "204" in spec["paths"]["/v1/notifications/{notification_id}/read"]["post"]["responses"]
