"""Integration tests of matching's handlers against PostgreSQL (a fresh database per test)."""
from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from matching_factories import (
    referral_submitted,
    service_removed,
    service_upserted,
    status_changed,
)
from sqlalchemy import select

from matching import handlers, tables
from matching.decide import DEFAULT_POLICY, Policy
from servicekit import events
from servicekit.db import Database

pytestmark = pytest.mark.integration


def policy_for(db: Database) -> Policy:
    """The policy the fixture chose (in-memory index or the database's; see conftest)."""
    return getattr(db, "test_policy", DEFAULT_POLICY)


def apply(db: Database, handler: Any, env: events.Envelope) -> None:
    with db.transaction() as session:
        handler(session, env, policy_for(db))


def upsert(db: Database, *services: events.Envelope) -> None:
    for env in services:
        apply(db, handlers.on_service_upserted, env)


def submit(db: Database, **kwargs: Any) -> str:
    env = referral_submitted(**kwargs)
    apply(db, handlers.on_referral_submitted, env)
    return env.subject


def routing_events(db: Database, referral_id: str | None = None) -> list[events.Envelope]:
    outbox = tables.metadata.tables["outbox"]
    query = select(outbox.c.payload, outbox.c.key, outbox.c.topic).order_by(outbox.c.id)
    with db.engine.connect() as conn:
        rows = list(conn.execute(query))
    assert all(r.topic == events.ROUTING_DECISIONS for r in rows)
    assert all(r.key == events.decode(r.payload).subject for r in rows)
    found = [events.decode(r.payload) for r in rows]
    return [e for e in found if referral_id is None or e.subject == referral_id]


def load(db: Database, service_id: str) -> tuple[int, int]:
    sl = tables.service_load
    with db.engine.connect() as conn:
        row = conn.execute(select(sl.c.open_offers, sl.c.active_cases)
                           .where(sl.c.service_id == service_id)).one()
    return row.open_offers, row.active_cases


def offer_made(db: Database, referral_id: str, proposal: events.Envelope) -> None:
    """What referral-intake does with a proposal it can place."""
    apply(db, handlers.on_status_changed, status_changed(
        referral_id, "submitted", "offered", service_id=proposal.data["service_id"],
        proposal_id=proposal.id, attempt=proposal.data["attempt"]))


def test_submitted_referral_gets_exactly_one_proposal_for_the_fitting_service(
        matching_db: Database) -> None:
    upsert(matching_db, service_upserted("svc-fit", km_north=4.0),
           service_upserted("svc-food", km_north=0.2, categories=["food"]),
           service_upserted("svc-youth", km_north=0.2, age_min=12, age_max=17))
    rid = submit(matching_db, age=34)

    [proposal] = routing_events(matching_db)
    assert proposal.type == events.ROUTING_PROPOSED
    assert proposal.subject == rid and proposal.source == "matching"
    assert proposal.data["service_id"] == "svc-fit"
    assert proposal.data["attempt"] == 1
    assert proposal.data["eliminated"]["category"] == 1
    assert proposal.data["eliminated"]["age"] == 1
    assert load(matching_db, "svc-fit") == (1, 0)
    assert load(matching_db, "svc-youth") == (0, 0)
    with matching_db.engine.connect() as conn:
        [decision] = conn.execute(select(tables.decisions)).mappings().all()
    assert decision["outcome"] == "proposed" and decision["event_id"] == proposal.id
    assert decision["candidates"] == 3


def test_a_redelivered_submission_does_not_propose_twice(matching_db: Database) -> None:
    upsert(matching_db, service_upserted("svc-fit"))
    env = referral_submitted()
    apply(matching_db, handlers.on_referral_submitted, env)
    apply(matching_db, handlers.on_referral_submitted, env)
    assert len(routing_events(matching_db)) == 1
    assert load(matching_db, "svc-fit") == (1, 0)


def test_a_capacity_one_service_is_never_offered_twice(matching_db: Database) -> None:
    upsert(matching_db, service_upserted("svc-one", capacity=1))
    first, second = submit(matching_db), submit(matching_db)

    [proposed] = routing_events(matching_db, first)
    [exhausted] = routing_events(matching_db, second)
    assert proposed.type == events.ROUTING_PROPOSED
    assert exhausted.type == events.ROUTING_EXHAUSTED
    assert exhausted.data["eliminated"]["at_capacity"] == 1
    assert exhausted.data["candidates_considered"] == 1
    assert load(matching_db, "svc-one") == (1, 0)


def test_when_the_nearest_service_is_full_the_next_one_is_proposed(
        matching_db: Database) -> None:
    upsert(matching_db, service_upserted("svc-near", km_north=0.5, capacity=1),
           service_upserted("svc-far", km_north=9.0, capacity=3))
    first, second = submit(matching_db), submit(matching_db)
    assert routing_events(matching_db, first)[0].data["service_id"] == "svc-near"
    assert routing_events(matching_db, second)[0].data["service_id"] == "svc-far"
    assert load(matching_db, "svc-near") == (1, 0)
    assert load(matching_db, "svc-far") == (1, 0)


def test_decline_frees_load_and_re_proposes_to_the_next_service(matching_db: Database) -> None:
    upsert(matching_db, service_upserted("svc-a", km_north=1.0),
           service_upserted("svc-b", km_north=6.0))
    rid = submit(matching_db)
    [first] = routing_events(matching_db, rid)
    assert first.data["service_id"] == "svc-a"
    offer_made(matching_db, rid, first)
    assert load(matching_db, "svc-a") == (1, 0)  # the offer is the reservation, not a second

    apply(matching_db, handlers.on_status_changed, status_changed(
        rid, "offered", "submitted", service_id="svc-a", offer_status="declined",
        reason_code="not_eligible", proposal_id=first.id))

    second = routing_events(matching_db, rid)[-1]
    assert second.type == events.ROUTING_PROPOSED
    assert second.data["service_id"] == "svc-b"
    assert second.data["attempt"] == 2
    assert second.data["eliminated"]["already_tried"] == 1
    assert load(matching_db, "svc-a") == (0, 0)
    assert load(matching_db, "svc-b") == (1, 0)


def test_expiry_with_no_one_left_ends_in_exhaustion(matching_db: Database) -> None:
    upsert(matching_db, service_upserted("svc-only"))
    rid = submit(matching_db)
    [first] = routing_events(matching_db, rid)
    offer_made(matching_db, rid, first)
    apply(matching_db, handlers.on_status_changed, status_changed(
        rid, "offered", "submitted", service_id="svc-only", offer_status="expired",
        reason_code="expired", proposal_id=first.id))

    last = routing_events(matching_db, rid)[-1]
    assert last.type == events.ROUTING_EXHAUSTED
    assert last.data["attempt"] == 2
    assert last.data["eliminated"]["already_tried"] == 1
    assert load(matching_db, "svc-only") == (0, 0)


def test_acceptance_turns_the_offer_into_a_case_and_closing_frees_it(
        matching_db: Database) -> None:
    upsert(matching_db, service_upserted("svc-a"))
    rid = submit(matching_db)
    [proposal] = routing_events(matching_db, rid)
    offer_made(matching_db, rid, proposal)

    apply(matching_db, handlers.on_status_changed, status_changed(
        rid, "offered", "accepted", service_id="svc-a", offer_status="accepted"))
    assert load(matching_db, "svc-a") == (0, 1)
    apply(matching_db, handlers.on_status_changed, status_changed(rid, "accepted", "in_progress"))
    assert load(matching_db, "svc-a") == (0, 1)
    apply(matching_db, handlers.on_status_changed, status_changed(rid, "in_progress", "completed"))
    assert load(matching_db, "svc-a") == (0, 0)
    assert len(routing_events(matching_db, rid)) == 1


def test_a_voided_proposal_releases_its_reservation(matching_db: Database) -> None:
    upsert(matching_db, service_upserted("svc-a"))
    rid = submit(matching_db)
    [proposal] = routing_events(matching_db, rid)
    apply(matching_db, handlers.on_status_changed, status_changed(
        rid, "cancelled", "cancelled", service_id="svc-a", offer_status="withdrawn",
        reason_code="proposal_void", proposal_id=proposal.id))
    assert load(matching_db, "svc-a") == (0, 0)
    assert len(routing_events(matching_db, rid)) == 1  # not routable: no new decision


def test_a_manual_assignment_counts_as_an_open_offer(matching_db: Database) -> None:
    upsert(matching_db, service_upserted("svc-a", capacity=2))
    rid = str(uuid.uuid4())  # submitted before matching ran: no view of it
    apply(matching_db, handlers.on_status_changed, status_changed(
        rid, "unmatched", "offered", service_id="svc-a", proposal_id=None))
    assert load(matching_db, "svc-a") == (1, 0)


def test_an_older_snapshot_does_not_overwrite_a_newer_one(matching_db: Database) -> None:
    now = datetime.now(UTC)
    upsert(matching_db, service_upserted("svc-a", capacity=7, updated_at=now),
           service_upserted("svc-a", capacity=2, accepting=False,
                            updated_at=now - timedelta(minutes=5)))
    with matching_db.engine.connect() as conn:
        row = conn.execute(select(tables.service_view)).one()
    assert row.capacity_max == 7


def test_a_removed_or_paused_service_gets_no_proposals(matching_db: Database) -> None:
    upsert(matching_db, service_upserted("svc-gone"),
           service_upserted("svc-paused", accepting=False))
    apply(matching_db, handlers.on_service_removed, service_removed("svc-gone"))
    rid = submit(matching_db)
    [decision] = routing_events(matching_db, rid)
    assert decision.type == events.ROUTING_EXHAUSTED
    assert decision.data["eliminated"]["not_accepting"] == 1
    assert decision.data["candidates_considered"] == 1


def test_erasure_purges_location_and_eligibility(matching_db: Database) -> None:
    upsert(matching_db, service_upserted("svc-a"))
    rid = submit(matching_db, preferred_language="pt")
    erased = events.new_event(events.REFERRAL_ERASED, subject=rid, sequence=99,
                              source="referral-intake",
                              data={"referral_id": rid, "occurred_at": datetime.now(UTC)})
    apply(matching_db, handlers.on_referral_erased, erased)
    with matching_db.engine.connect() as conn:
        ref = conn.execute(select(tables.referral_view)).one()
        [reasons] = conn.execute(select(tables.decisions.c.reasons)).scalars().all()
    assert (ref.geohash, ref.lat, ref.lon, ref.eligibility) == (None, None, None, {})
    assert reasons == []


def test_concurrent_reservations_never_overfill_a_service(matching_db: Database) -> None:
    upsert(matching_db, service_upserted("svc-one", capacity=1))
    now = datetime.now(UTC)
    results: list[bool] = []
    with matching_db.transaction() as first:
        assert tables.reserve(first, "svc-one", 1, now)

        def second_worker() -> None:
            with matching_db.transaction() as second:
                results.append(tables.reserve(second, "svc-one", 1, now))

        racer = threading.Thread(target=second_worker)
        racer.start()  # blocks on the row lock until the first transaction commits
    racer.join(timeout=30)
    assert results == [False]
    assert load(matching_db, "svc-one") == (1, 0)


def test_an_unmatched_referral_is_proposed_when_a_fitting_service_appears(
        matching_db: Database) -> None:
    rid = submit(matching_db)  # the directory is still empty
    [exhausted] = routing_events(matching_db, rid)
    assert exhausted.type == events.ROUTING_EXHAUSTED
    apply(matching_db, handlers.on_status_changed, status_changed(rid, "submitted", "unmatched"))
    assert len(routing_events(matching_db, rid)) == 1  # nothing fits yet: no repeated verdict
    upsert(matching_db, service_upserted("svc-new"))
    last = routing_events(matching_db, rid)[-1]
    assert (last.type, last.data["service_id"], last.data["attempt"]) == (
        events.ROUTING_PROPOSED, "svc-new", 2)
    assert load(matching_db, "svc-new") == (1, 0)


def test_a_service_that_appeared_before_the_unmatched_answer_is_used(
        matching_db: Database) -> None:
    rid = submit(matching_db)
    upsert(matching_db, service_upserted("svc-late"))  # arrives while intake is answering
    assert [e.type for e in routing_events(matching_db, rid)] == [events.ROUTING_EXHAUSTED]
    apply(matching_db, handlers.on_status_changed, status_changed(rid, "submitted", "unmatched"))
    last = routing_events(matching_db, rid)[-1]
    assert (last.type, last.data["service_id"]) == (events.ROUTING_PROPOSED, "svc-late")
