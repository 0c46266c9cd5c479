"""Benchmark (not a test): CPU matching spends per ``referral.status_changed`` in the
pipeline's common case, an offer answering one of its proposals (submitted -> offered),
handled one event at a time (``on_status_changed``, as the consumer runner calls a handler
without ``handle_many``) and as runs (``StatusChangedHandler.handle_many``).

Each run of ``RUN`` offers is handled in one transaction, then rolled back, so every run
starts from the same state (the referrals proposed and their places reserved); passes of
``RUNS`` runs alternate between the two paths. Reported: the median over ``REPS`` passes of
this process' CPU (``time.process_time``) and the PostgreSQL backend's CPU (/proc of the
connection's backend; the database runs on this machine) per event, and the statements
sent per run (each execute or executemany counted once). CPU, not wall time: the machine
is shared. Usage: ``python bench/cost_status_changes.py [RUN] [REPS] [RUNS]`` with
PYTHONPATH set as for the tests; uses the local PostgreSQL (a fresh database, dropped at
the end).
"""
from __future__ import annotations

import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from benchlib import backends_cpu_s, pids_cpu_s, report_passes, scratch_database

from matching import bootstrap, consumers, handlers, tables
from matching.decide import Policy
from matching.index import DirectoryIndex
from servicekit import events, geo
from servicekit.consumer import ConsumerRunner, RunnerConfig
from servicekit.db import Database, run_migrations

HOME = (51.5074, -0.1278)


def _service(i: int) -> events.Envelope:
    lat, lon = HOME[0] + (i % 10) / 111.2, HOME[1] + (i // 10) / 70.0
    data = {
        "service_id": f"svc-{i:03d}", "organization_id": f"org-{i // 3}",
        "organization_name": "Bench", "service_name": f"Shelter {i}", "status": "active",
        "categories": ["housing"],
        "locations": [{"location_id": f"loc-{i}", "lat": lat, "lon": lon,
                       "geohash": geo.encode(lat, lon, 9)}],
        "service_area": {"radius_km": 25.0, "geohashes": []}, "age_min": None,
        "age_max": None, "genders": [], "populations": [], "languages": ["en"],
        "interpretation_available": False,
        "schedule": {"always_open": True, "timezone": "Europe/London", "hours": []},
        "capacity": {"maximum": 1000, "accepting": True, "available": None},
        "notification_channels": ["in_app"], "updated_at": datetime.now(UTC)}
    return events.new_event(events.PROVIDER_SERVICE_UPSERTED, subject=data["service_id"],
                            sequence=1, data=data, source="provider-registry")


def _submitted(n: int) -> events.Envelope:
    rid = str(uuid.UUID(int=n, version=4))
    return events.new_event(events.REFERRAL_SUBMITTED, subject=rid, sequence=1, data={
        "referral_id": rid, "short_id": "R-7F3K", "need": "housing", "urgency": "urgent",
        "coarse_location": geo.coarsen(*HOME), "eligibility": {"age": 34, "flags": []},
        "consent": {"share_with_provider": True, "referrer_updates": "milestones",
                    "contact_methods": ["phone"]},
        "agency_id": "bench-pd", "officer_ref": "off-bench", "submitted_at": datetime.now(UTC)},
        source="referral-intake")


def _offer(decision: events.Envelope) -> events.Envelope:
    """What referral-intake emits when it places one of matching's proposals."""
    now = datetime.now(UTC)
    return events.new_event(events.REFERRAL_STATUS_CHANGED, subject=decision.subject,
                            sequence=2, source="referral-intake", data={
        "referral_id": decision.subject, "short_id": "R-7F3K", "need": "housing",
        "urgency": "urgent", "agency_id": "bench-pd", "officer_ref": "off-bench",
        "from_status": "submitted", "to_status": "offered",
        "offer": {"offer_id": str(uuid.uuid4()), "service_id": decision.data["service_id"],
                  "organization_id": decision.data["organization_id"],
                  "expires_at": now + timedelta(hours=4), "status": "open",
                  "attempt": decision.data["attempt"]},
        "reason_code": None, "outcome_code": None, "actor_role": "system",
        "referrer_updates": "milestones", "proposal_id": decision.id, "occurred_at": now})


def _pass(db: Database, envs: list[events.Envelope], batched: bool, runs: int,
          counter: list[int]) -> tuple[float, float, int]:
    """The run handled ``runs`` times, each in a transaction rolled back: (client CPU s,
    backend CPU s, statements) per run. (The backend's CPU is counted in clock ticks, so
    over several runs on one pooled connection.)"""
    cpu = 0.0
    pids = set()
    for i in range(runs):
        with db.uow() as uow:
            pids.add(uow.session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
            if i == 0:
                db_cpu = pids_cpu_s([next(iter(pids))])
            counter[0] = 0
            started = time.process_time()
            if batched:
                handlers.StatusChangedHandler(Policy()).handle_many(uow.session, envs)
            else:
                for env in envs:
                    handlers.on_status_changed(uow.session, env)
            cpu += time.process_time() - started
            statements = counter[0]
            uow.rollback()
    assert len(pids) == 1, pids  # one backend served every run
    return cpu / runs, (pids_cpu_s([pids.pop()]) - db_cpu) / runs, statements


def _offers_for_new_referrals(db: Database, first: int, count: int) -> list[events.Envelope]:
    """``count`` new referrals submitted and proposed (committed), and intake's offers for
    them."""
    subs = [_submitted(n) for n in range(first, first + count)]
    with db.transaction() as session:
        handlers.on_referrals_submitted(session, subs, Policy())
    outbox = tables.metadata.tables["outbox"]
    wanted = {e.subject for e in subs}
    with db.engine.connect() as c:
        found = [events.decode(r.payload) for r in c.execute(outbox.select())]
    offers = [_offer(d) for d in found
              if d.subject in wanted and d.type == events.ROUTING_PROPOSED]
    assert len(offers) == count, len(offers)
    return offers


def _runner_pass(db: Database, offers: list[events.Envelope], batched: bool, run: int,
                 counter: list[int]) -> tuple[float, float, int]:
    """The offers through the consumer runner as the worker gets them, in polls of ``run``
    records (decode, inbox claim, handler, commit): (client CPU s, backend CPU s,
    statements) per poll."""
    spec = consumers.consumer_specs(Policy())[0]
    handler = spec.handlers[events.REFERRAL_STATUS_CHANGED]
    chosen = dict(spec.handlers)
    if not batched and hasattr(handler, "handle_many"):
        chosen[events.REFERRAL_STATUS_CHANGED] = handler.__call__  # each event alone
    runner = ConsumerRunner(name=spec.name, db=db, consumer=None, producer=None,
                            topics=spec.topics, handlers=chosen,
                            config=RunnerConfig(batch_size=max(100, run)))
    records = [SimpleNamespace(topic=events.REFERRAL_EVENTS, partition=0, offset=i,
                               key=e.subject.encode(), value=events.encode(e), headers=[])
               for i, e in enumerate(offers)]
    polls = [records[i:i + run] for i in range(0, len(records), run)]
    counter[0] = 0
    db_cpu, cpu = backends_cpu_s(db.engine.url.database), time.process_time()
    for poll in polls:
        runner.process_batch(poll)
    cpu = time.process_time() - cpu
    statements = counter[0]
    return (cpu / len(polls), (backends_cpu_s(db.engine.url.database) - db_cpu) / len(polls),
            round(statements / len(polls)))


def main(run: int = 50, reps: int = 5, runs: int = 20) -> None:
    with scratch_database("bench_status") as (_name, url):
        run_migrations(url, bootstrap.MIGRATIONS)
        db = Database(url, tables.metadata)
        try:
            policy = Policy(index=DirectoryIndex())
            with db.transaction() as session:
                for i in range(20):
                    handlers.on_service_upserted(session, _service(i), policy)
            with db.transaction() as session:
                handlers.on_referrals_submitted(session, [_submitted(n) for n in range(1, run + 1)],
                                                policy)
            outbox = tables.metadata.tables["outbox"]
            with db.engine.connect() as c:
                decisions = [events.decode(r.payload) for r in c.execute(outbox.select())]
            offers = [_offer(d) for d in decisions if d.type == events.ROUTING_PROPOSED]
            assert len(offers) == run, len(offers)
            counter = [0]

            @sa.event.listens_for(db.engine, "before_cursor_execute")
            def _count(*_args: Any) -> None:
                counter[0] += 1

            found: dict[bool, list[tuple[float, float, int]]] = {False: [], True: []}
            for _ in range(reps + 1):  # the first pass of each: warm-up, not counted
                for batched in (False, True):
                    found[batched].append(_pass(db, offers, batched, runs, counter))
            for batched in (False, True):
                report_passes(f"handler, {'handle_many' if batched else 'one at a time'}",
                              found[batched][1:], run, "event", f"{runs} runs of {run}")
            through: dict[bool, list[tuple[float, float, int]]] = {False: [], True: []}
            first = run + 1
            for _ in range(reps + 1):
                for batched in (False, True):
                    fresh = _offers_for_new_referrals(db, first, run * runs)
                    first += run * runs
                    through[batched].append(_runner_pass(db, fresh, batched, run, counter))
            for batched in (False, True):
                report_passes(
                    f"consumer runner, {'handle_many' if batched else 'one at a time'}",
                    through[batched][1:], run, "event", f"{runs} polls of {run} records")
        finally:
            db.dispose()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
