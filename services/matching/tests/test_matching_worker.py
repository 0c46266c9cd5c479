"""The worker's wiring end to end through the real broker: provider and referral events in,
``routing.proposed`` out through the outbox relay."""
from __future__ import annotations

import threading
import uuid
from dataclasses import replace

import pytest
from matching_factories import referral_submitted, service_upserted
from sqlalchemy import select

from matching import bootstrap, tables
from servicekit import events
from servicekit import kafka as kafkakit
from servicekit.db import Database
from servicekit.runtime import build_components
from servicekit.settings import Settings
from servicekit.testing import iter_topic, wait_for

pytestmark = pytest.mark.integration


def publish(settings: Settings, *envelopes: events.Envelope) -> None:
    producer = kafkakit.make_producer(settings.kafka_bootstrap_servers)
    for env in envelopes:
        producer.send(env.topic, key=env.key, value=events.encode(env),
                      headers=events.headers_for(env)).get(timeout=30)
    producer.close()


def test_worker_turns_a_submitted_referral_into_a_published_proposal(
        matching_settings: Settings) -> None:
    db, spec = bootstrap.worker(matching_settings)
    group = f"matching-test-{uuid.uuid4().hex[:8]}"  # a group of its own, isolated offsets
    spec = replace(spec, consumers=[replace(c, name=group) for c in spec.consumers])
    assert {events.PROVIDER_EVENTS, events.REFERRAL_EVENTS} == set(spec.consumers[0].topics)
    stop = threading.Event()
    components, producer = build_components(matching_settings, db, spec)
    threads = [threading.Thread(target=run, args=(stop,), name=name, daemon=True)
               for name, run in components]
    for thread in threads:
        thread.start()
    try:
        service_id = f"svc-{uuid.uuid4().hex[:8]}"
        publish(matching_settings, service_upserted(service_id))
        # a fresh group reads every event earlier tests of the session left in the topics
        wait_for(lambda: _stored(db, service_id), timeout=240, message="service snapshot")
        submitted = referral_submitted()
        publish(matching_settings, submitted)
        wait_for(lambda: _sent(db, submitted.subject), timeout=120, message="proposal relayed")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        producer.close(timeout=5)
        db.dispose()
    published = [events.decode(r.value) for r in iter_topic(
        matching_settings.kafka_bootstrap_servers, events.ROUTING_DECISIONS)]
    mine = [e for e in published if e.subject == submitted.subject]
    assert [e.type for e in mine] == [events.ROUTING_PROPOSED]
    assert mine[0].data["service_id"] == service_id
    assert mine[0].causation_id == submitted.id
    assert mine[0].correlation_id == submitted.correlation_id


def _stored(db: Database, service_id: str) -> bool:
    with db.engine.connect() as conn:
        return conn.execute(select(tables.service_view.c.service_id).where(
            tables.service_view.c.service_id == service_id)).first() is not None


def _sent(db: Database, referral_id: str) -> bool:
    outbox = tables.metadata.tables["outbox"]
    with db.engine.connect() as conn:
        row = conn.execute(select(outbox.c.sent_at).where(outbox.c.key == referral_id)).first()
    return row is not None and row.sent_at is not None
