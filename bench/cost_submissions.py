"""Benchmark (not a test): CPU and statements matching spends per ``referral.submitted``
handled as runs (``SubmittedHandler.handle_many``, the consumer's way in a batch) and one
event at a time (``on_referral_submitted``), over a directory where each referral has
several candidates with differing loads.

Each run of ``RUN`` submissions is handled in one transaction, then rolled back, so every run
starts from the same state; passes of ``RUNS`` runs alternate between the two paths. Then
fresh submissions go through the consumer runner in polls of ``RUN`` records (committed).
Reported: the median over ``REPS`` passes of this process' CPU (``time.process_time``) and
the PostgreSQL backend's CPU per submission, and the statements sent per run (each of the
driver's execute or executemany counted once: the index's own statement, sent on the driver
connection, included). CPU, not wall time: the machine is shared. Usage:
``python bench/cost_submissions.py [RUN] [REPS] [RUNS]`` with PYTHONPATH set as for the
tests (and ``bench``); uses the local PostgreSQL (a fresh database, dropped at the end).
"""
from __future__ import annotations

import random
import sys
import time
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import psycopg
import sqlalchemy as sa
from benchlib import backends_cpu_s, pids_cpu_s, report_passes, scratch_database
from cost_status_changes import HOME, _service

from matching import bootstrap, consumers, handlers, tables
from matching.decide import Policy
from matching.index import DirectoryIndex
from servicekit import events, geo
from servicekit.consumer import ConsumerRunner, RunnerConfig
from servicekit.db import Database, run_migrations

SERVICES = 60  # 25 km radii on a 9 km x 5 km grid: every referral has them all


def _submitted(n: int, rng: random.Random) -> events.Envelope:
    rid = str(uuid.UUID(int=n, version=4))
    where = geo.coarsen(HOME[0] + rng.uniform(-0.05, 0.05), HOME[1] + rng.uniform(-0.1, 0.1))
    return events.new_event(events.REFERRAL_SUBMITTED, subject=rid, sequence=1, data={
        "referral_id": rid, "short_id": "R-7F3K", "need": "housing", "urgency": "urgent",
        "coarse_location": where, "eligibility": {"age": 34, "flags": []},
        "consent": {"share_with_provider": True, "referrer_updates": "milestones",
                    "contact_methods": ["phone"]},
        "agency_id": "bench-pd", "officer_ref": "off-bench", "submitted_at": datetime.now(UTC)},
        source="referral-intake")


def _pass(db: Database, policy: Policy, envs: list[events.Envelope], batched: bool,
          runs: int, counter: list[int]) -> tuple[float, float, int]:
    """The run handled ``runs`` times, each in a transaction rolled back: (client CPU s,
    backend CPU s, statements) per run."""
    cpu = 0.0
    pids = set()
    handler = handlers.SubmittedHandler(policy)
    for i in range(runs):
        with db.uow() as uow:
            pids.add(uow.session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
            if i == 0:
                db_cpu = pids_cpu_s([next(iter(pids))])
            counter[0] = 0
            started = time.process_time()
            if batched:
                handler.handle_many(uow.session, envs)
            else:
                for env in envs:
                    handler(uow.session, env)
            cpu += time.process_time() - started
            statements = counter[0]
            uow.rollback()
    assert len(pids) == 1, pids
    return cpu / runs, (pids_cpu_s([pids.pop()]) - db_cpu) / runs, statements


def _runner_pass(db: Database, policy: Policy, envs: list[events.Envelope], run: int,
                 counter: list[int]) -> tuple[float, float, int]:
    """The submissions through the consumer runner in polls of ``run`` records (decode,
    inbox claim, handler, commit): (client CPU s, backend CPU s, statements) per poll."""
    spec = consumers.consumer_specs(policy)[0]
    runner = ConsumerRunner(name=spec.name, db=db, consumer=None, producer=None,
                            topics=spec.topics, handlers=spec.handlers,
                            config=RunnerConfig(batch_size=max(100, run)))
    records = [SimpleNamespace(topic=events.REFERRAL_EVENTS, partition=0, offset=i,
                               key=e.subject.encode(), value=events.encode(e), headers=[])
               for i, e in enumerate(envs)]
    polls = [records[i:i + run] for i in range(0, len(records), run)]
    counter[0] = 0
    db_cpu, cpu = backends_cpu_s(db.engine.url.database), time.process_time()
    for poll in polls:
        runner.process_batch(poll)
    cpu = time.process_time() - cpu
    return (cpu / len(polls), (backends_cpu_s(db.engine.url.database) - db_cpu) / len(polls),
            round(counter[0] / len(polls)))


def main(run: int = 50, reps: int = 5, runs: int = 10) -> None:
    with scratch_database("bench_submit") as (_name, url):
        run_migrations(url, bootstrap.MIGRATIONS)
        db = Database(url, tables.metadata)
        rng = random.Random(7)
        try:
            policy = Policy(index=DirectoryIndex())
            with db.transaction() as session:
                for i in range(SERVICES):
                    handlers.on_service_upserted(session, _service(i), policy)
            with db.transaction() as session:  # differing loads: some places taken already
                handlers.on_referrals_submitted(
                    session, [_submitted(n, rng) for n in range(1, 201)], policy)
            envs = [_submitted(n, rng) for n in range(1000, 1000 + run)]
            counter = [0]

            for method in ("execute", "executemany"):  # the driver's: the index's own included
                real = getattr(psycopg.Cursor, method)

                def counted(self: Any, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
                    counter[0] += 1
                    return _real(self, *args, **kwargs)

                setattr(psycopg.Cursor, method, counted)

            found: dict[bool, list[tuple[float, float, int]]] = {False: [], True: []}
            for _ in range(reps + 1):  # the first pass of each: warm-up, not counted
                for batched in (False, True):
                    found[batched].append(_pass(db, policy, envs, batched, runs, counter))
            for batched in (False, True):
                report_passes(f"handler, {'handle_many' if batched else 'one at a time'}",
                              found[batched][1:], run, "submission")
            through = []
            first = 10_000
            for _ in range(reps + 1):
                fresh = [_submitted(n, rng) for n in range(first, first + run * runs)]
                first += run * runs
                through.append(_runner_pass(db, policy, fresh, run, counter))
            report_passes("consumer runner (batches)", through[1:], run, "submission")
        finally:
            db.dispose()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
