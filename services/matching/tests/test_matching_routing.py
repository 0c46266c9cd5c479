"""Routing through the real handlers and the spatial index (PostgreSQL and SQLite): traps,
cascades, exhaustion reasons, retries of unmatched referrals, answer history."""
from __future__ import annotations

import uuid
from typing import Any

import pytest
from intake_double import IntakeDouble
from matching_factories import referral_submitted, service_removed, service_upserted
from sqlalchemy import func, select
from test_matching_handlers import apply, load, routing_events, upsert

from matching import directory, handlers, tables
from servicekit import events
from servicekit.db import Database

pytestmark = pytest.mark.integration

CLOSED = {"always_open": False, "timezone": "Europe/London", "hours": []}  # never open


class Loop:
    """matching's handlers wired to an intake double, one transaction per event."""

    def __init__(self, db: Database):
        self.db = db
        self.intake = IntakeDouble(lambda env: apply(db, handlers.on_status_changed, env))
        self.seen: set[str] = set()

    def submit(self, **kwargs: Any) -> str:
        env = referral_submitted(**kwargs)
        apply(self.db, handlers.on_referral_submitted, env)
        return env.subject

    def new_decisions(self) -> list[events.Envelope]:
        fresh = [e for e in routing_events(self.db) if e.id not in self.seen]
        self.seen |= {e.id for e in fresh}
        return fresh

    def answer_all(self) -> list[events.Envelope]:
        fresh = self.new_decisions()
        for decision in fresh:
            self.intake.answer(decision)
        return fresh


def trap_directory(db: Database) -> None:
    """Seven traps, each nearer (or emptier) than the one service that fits, each with one
    flaw; every service but the language trap can interpret."""
    interpreting = {"interpretation_available": True}
    upsert(db,
           service_upserted("svc-decliner", km_north=0.2, **interpreting),
           service_upserted("svc-full", km_north=0.3, capacity=1, **interpreting),
           service_upserted("svc-closed", km_north=0.3, schedule=CLOSED, **interpreting),
           service_upserted("svc-old-only", km_north=0.3, age_min=60, **interpreting),
           service_upserted("svc-english", km_north=0.3),
           service_upserted("svc-far", km_north=40.0, **interpreting),
           service_upserted("svc-elsewhere", km_north=0.3, **interpreting,
                            service_area={"radius_km": None, "geohashes": ["u0"]}),
           service_upserted("svc-inactive", km_north=0.3, status="inactive", **interpreting),
           service_upserted("svc-food", km_north=0.3, categories=["food"], **interpreting),
           service_upserted("svc-fit", km_north=9.0, capacity=1, **interpreting))


def test_the_offer_goes_to_the_one_fitting_service_every_time(matching_db: Database) -> None:
    trap_directory(matching_db)
    loop = Loop(matching_db)
    loop.intake.apply(_manual_offer_to("svc-full"))  # fills svc-full (capacity 1)
    for _ in range(4):
        rid = loop.submit(urgency="emergency", age=34, preferred_language="so",
                          needs_interpreter=True)
        [first] = loop.answer_all()
        assert first.data["service_id"] == "svc-decliner"
        loop.intake.decline(rid, "unable_to_serve")
        [second] = loop.answer_all()
        assert second.type == events.ROUTING_PROPOSED
        assert second.data["service_id"] == "svc-fit" and second.data["attempt"] == 2
        assert {k: v for k, v in second.data["eliminated"].items() if v} == {
            "category": 1, "inactive": 1, "at_capacity": 1, "age": 1, "language": 1,
            "out_of_area": 2, "closed_now": 1, "already_tried": 1}
        loop.intake.accept(rid)
        loop.intake.close(rid)  # svc-fit (capacity 1) is free again for the next one
    assert load(matching_db, "svc-fit") == (0, 0)


def _manual_offer_to(service_id: str) -> events.Envelope:
    from matching_factories import status_changed
    rid = str(uuid.uuid4())
    return status_changed(rid, "unmatched", "offered", service_id=service_id)


def test_cascade_across_three_declines_then_exhaustion(matching_db: Database) -> None:
    upsert(matching_db, *(service_upserted(f"svc-{n}", km_north=km)
                          for n, km in (("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0))))
    loop = Loop(matching_db)
    rid = loop.submit()
    offered = []
    for answer in (loop.intake.decline, loop.intake.expire, loop.intake.decline):
        [decision] = loop.answer_all()
        offered.append(decision.data["service_id"])
        answer(rid)
    [fourth] = loop.answer_all()
    assert offered + [fourth.data["service_id"]] == ["svc-a", "svc-b", "svc-c", "svc-d"]
    assert fourth.data["attempt"] == 4 and fourth.data["eliminated"]["already_tried"] == 3
    assert [load(matching_db, f"svc-{n}") for n in "abcd"] == [(0, 0)] * 3 + [(1, 0)]
    loop.intake.decline(rid)
    [last] = loop.answer_all()
    assert last.type == events.ROUTING_EXHAUSTED and last.data["attempt"] == 5
    assert last.data["eliminated"]["already_tried"] == 4
    assert last.data["reasons"] == [{"code": "already_tried",
                                     "text": "4 service(s) were already tried"}]
    assert loop.intake.status[rid] == "unmatched"
    assert [load(matching_db, f"svc-{n}") for n in "abcd"] == [(0, 0)] * 4


def test_an_emergency_with_nothing_open_now_is_exhausted_at_once(matching_db: Database) -> None:
    upsert(matching_db, service_upserted("svc-day", schedule=CLOSED),
           service_upserted("svc-kids", age_max=17),
           service_upserted("svc-far", km_north=50.0))
    loop = Loop(matching_db)
    loop.submit(urgency="emergency", age=34)
    [decision] = loop.new_decisions()
    assert decision.type == events.ROUTING_EXHAUSTED and decision.data["attempt"] == 1
    assert {k: v for k, v in decision.data["eliminated"].items() if v} == {
        "closed_now": 1, "age": 1, "out_of_area": 1}
    assert decision.data["candidates_considered"] == 3
    assert {r["code"] for r in decision.data["reasons"]} == {"closed_now", "age",
                                                              "out_of_area"}
    assert load(matching_db, "svc-day") == (0, 0)


def test_a_freed_place_goes_to_the_most_urgent_then_oldest_unmatched(
        matching_db: Database) -> None:
    upsert(matching_db, service_upserted("svc-one", capacity=1))
    loop = Loop(matching_db)
    holder = loop.submit()
    loop.answer_all()
    loop.intake.accept(holder)
    waiting = {name: loop.submit(urgency=urgency) for name, urgency in
               (("routine", "routine"), ("urgent-old", "urgent"), ("urgent-new", "urgent"),
                ("emergency", "emergency"))}
    assert {d.type for d in loop.answer_all()} == {events.ROUTING_EXHAUSTED}
    order = []
    loop.intake.close(holder)
    for _ in waiting:
        [retry] = loop.answer_all()  # exactly one proposal per freed place
        assert retry.type == events.ROUTING_PROPOSED
        order.append(retry.subject)
        assert load(matching_db, "svc-one") == (1, 0)
        loop.intake.accept(retry.subject)
        loop.intake.close(retry.subject)
    names = {rid: name for name, rid in waiting.items()}
    assert [names[r] for r in order] == ["emergency", "urgent-old", "urgent-new", "routine"]
    assert loop.answer_all() == []


def test_a_retry_proposal_is_not_repeated_before_intake_answers(matching_db: Database) -> None:
    upsert(matching_db, service_upserted("svc-one", capacity=1))
    loop = Loop(matching_db)
    rid = loop.submit()
    loop.answer_all()  # offered to svc-one
    other = loop.submit()
    loop.answer_all()  # exhausted -> unmatched
    upsert(matching_db, service_upserted("svc-two", km_north=2.0, capacity=1))
    [retry] = loop.new_decisions()  # proposed to svc-two, not answered yet
    assert retry.subject == other and retry.data["service_id"] == "svc-two"
    upsert(matching_db, service_upserted("svc-three", km_north=3.0, capacity=1))
    loop.intake.decline(rid)  # frees svc-one, re-routes rid
    fresh = loop.new_decisions()
    assert [d.subject for d in fresh] == [rid]  # nothing new for `other`
    assert fresh[0].data["service_id"] == "svc-three"


def test_a_new_service_takes_unmatched_referrals_up_to_its_capacity(
        matching_db: Database) -> None:
    loop = Loop(matching_db)
    old = loop.submit(urgency="routine")
    urgent = loop.submit(urgency="urgent")
    newer = loop.submit(urgency="routine")
    loop.answer_all()
    assert set(loop.intake.status.values()) == {"unmatched"}
    upsert(matching_db, service_upserted("svc-new", capacity=2))
    assert {d.subject for d in loop.new_decisions()} == {urgent, old}
    assert newer not in {d.subject for d in routing_events(matching_db)
                         if d.type == events.ROUTING_PROPOSED}


def test_answers_feed_acceptance_and_response_into_the_next_scores(
        matching_db: Database) -> None:
    upsert(matching_db, service_upserted("svc-a", km_north=1.0),
           service_upserted("svc-b", km_north=1.0))
    loop = Loop(matching_db)
    first = loop.submit()
    [d1] = loop.answer_all()
    assert d1.data["service_id"] == "svc-a"  # twins: the tie-break
    loop.intake.decline(first)  # svc-a declines; svc-b gets it and accepts
    loop.answer_all()
    loop.intake.accept(first)
    h = tables.service_history.c
    with matching_db.engine.connect() as conn:
        rows = {r.service_id: (r.answered, r.accepted, r.timed) for r in conn.execute(
            select(h.service_id, h.answered, h.accepted, h.timed))}
    assert rows == {"svc-a": (1, 0, 1), "svc-b": (1, 1, 1)}
    loop.submit()
    [d2] = loop.answer_all()
    assert d2.data["service_id"] == "svc-b"  # the one that accepts now ranks first
    assert {"code": "acceptance", "text": "accepted 1 of 1 answered offers"} in d2.data[
        "reasons"]


def test_the_index_follows_moves_and_removals(matching_db: Database) -> None:
    upsert(matching_db, service_upserted("svc-m", km_north=1.0),
           *(service_upserted(f"svc-far-{i}", km_north=200.0 + i) for i in range(5)))
    with matching_db.transaction() as session:
        near, pre = directory.candidates_for(session, "housing", _home_cell())
    assert [c.service_id for c in near] == ["svc-m"]
    assert pre == {"category": 0, "out_of_area": 5}
    upsert(matching_db, service_upserted("svc-m", km_north=300.0, categories=["food"]))
    with matching_db.transaction() as session:
        assert directory.candidates_for(session, "housing", _home_cell()) == (
            [], {"category": 1, "out_of_area": 5})
    apply(matching_db, handlers.on_service_removed, service_removed("svc-m"))
    cells = tables.service_cells
    with matching_db.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(cells)
                            .where(cells.c.service_id == "svc-m")).scalar_one() == 0
    with matching_db.transaction() as session:
        assert directory.counts(session, "food") == (5, 0)


def _home_cell() -> str:
    from matching_factories import HOME

    from servicekit import geo
    return geo.coarsen(*HOME)["geohash"]


def test_a_cached_snapshot_is_never_used_after_the_service_changes(
        matching_db: Database) -> None:
    cache = directory.CandidateCache()
    upsert(matching_db, service_upserted("svc-c", capacity=3))
    with matching_db.transaction() as session:
        [before], _ = directory.candidates_for(session, "housing", _home_cell(), cache)
    assert before.age_max is None and before.capacity_max == 3
    upsert(matching_db, service_upserted("svc-c", capacity=4, age_max=17))
    loop = Loop(matching_db)
    loop.submit(age=34)  # the load moves too: load and history are never cached
    with matching_db.transaction() as session:
        [after], _ = directory.candidates_for(session, "housing", _home_cell(), cache)
    assert after.age_max == 17 and after.capacity_max == 4
    assert cache.entries["svc-c"][1].age_max == 17
    upsert(matching_db, service_upserted("svc-c", capacity=4))
    rid = loop.submit(age=34)
    [decision] = [d for d in loop.new_decisions() if d.subject == rid]
    with matching_db.transaction() as session:
        [again], _ = directory.candidates_for(session, "housing", _home_cell(), cache)
    assert decision.type == events.ROUTING_PROPOSED and again.open_offers == 1


def test_near_misses_count_as_out_of_area_whatever_else_they_fail(
        matching_db: Database) -> None:
    """The reach box skips a service whose radius cannot reach the resident; one inside
    the box but outside the radius is dropped by the exact check: both count under
    out_of_area (not under the inactive status they also have), as a linear scan checking
    the area right after the category would count them."""
    import math

    from matching_factories import HOME

    east = (HOME[0], HOME[1] + 15.0 / (111.32 * math.cos(math.radians(HOME[0]))))
    upsert(matching_db, service_upserted("svc-near", km_north=1.0),
           service_upserted("svc-north", km_north=22.0, status="inactive"),  # outside the box
           service_upserted("svc-corner", km_north=15.0, home=east, status="inactive"))
    with matching_db.transaction() as session:
        read = directory.nearby(session, "housing", _home_cell())
        near, pre = directory.candidates_for(session, "housing", _home_cell())
    assert read.rows_read == 2  # svc-north never left the database
    assert [c.service_id for c in read.candidates] == [c.service_id for c in near] == [
        "svc-near"]
    assert pre == {"category": 0, "out_of_area": 2}
