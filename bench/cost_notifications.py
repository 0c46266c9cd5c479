"""Load-independent cost of the notifications consumer's batch path (not a `make bench` timing
bench): CPU ms per event of the worker (``time.process_time``: decode, inbox claims,
handlers, commit, the per-event log lines formatted as in production and discarded) and of
its PostgreSQL backend (utime + stime from /proc, 10 ms ticks), and SQL statements per
batch, for the events of the pipeline: each referral's ``referral.submitted`` and its
``referral.status_changed`` submitted -> offered, built as referral-intake emits them,
encoded and handed to ``ConsumerRunner.process_batch`` in polls of BATCH records (a poll
mixes new referrals' submissions with earlier referrals' offers, as the pipeline does).
Needs PostgreSQL on 127.0.0.1:5432; no broker.

    .venv/bin/python bench/cost_notifications.py   # BATCHES=40 BATCH=50 RUNS=5 LAG=25 PROFILE=1

Each run handles BATCHES fresh polls; the figures are the medians of RUNS runs.
PROFILE=1 prints a cProfile of one more run timed by CPU (``process_time``).
"""
from __future__ import annotations

import logging
import os
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from benchlib import backends_cpu_s, scratch_database
from sqlalchemy import event, text

from notifications import bootstrap, consumers, handlers, queries
from notifications.tables import metadata, org_view, preferences
from servicekit import events, logs
from servicekit.consumer import ConsumerRunner, RunnerConfig
from servicekit.db import Database, run_migrations

BATCHES = int(os.environ.get("BATCHES", "40"))
BATCH = int(os.environ.get("BATCH", "50"))
RUNS = int(os.environ.get("RUNS", "5"))
LAG = int(os.environ.get("LAG", "25"))  # referrals between a submission and its offer
ORGS = [str(uuid.uuid4()) for _ in range(4)]
AGENCY, OFFICER = "metro-pd", "b" * 43  # a blind index is 43 url-safe base64 characters


def _submitted(rid: str, now: str) -> events.Envelope:
    """``referral.submitted`` as intake's ``submitted_data`` builds it."""
    data = {"referral_id": rid, "short_id": f"R-{rid[:4].upper()}", "need": "housing",
            "urgency": "urgent",
            "coarse_location": {"geohash": "c23nb7", "lat": 47.612, "lon": -122.327},
            "eligibility": {"age": 30, "age_band": None, "gender": None,
                            "preferred_language": None, "needs_interpreter": False,
                            "flags": []},
            "consent": {"share_with_provider": False, "referrer_updates": "milestones",
                        "contact_methods": []},
            "agency_id": AGENCY, "officer_ref": OFFICER, "submitted_at": now}
    return events.new_event(events.REFERRAL_SUBMITTED, subject=rid, sequence=1,
                            source="referral-intake", data=data,
                            correlation_id=str(uuid.uuid4()))


def _offered(rid: str, org: str, now: str, expires: str) -> events.Envelope:
    """``referral.status_changed`` submitted -> offered as intake's ``_record`` builds it."""
    data = {"referral_id": rid, "short_id": f"R-{rid[:4].upper()}", "need": "housing",
            "urgency": "urgent", "agency_id": AGENCY, "officer_ref": OFFICER,
            "from_status": "submitted", "to_status": "offered",
            "offer": {"offer_id": str(uuid.uuid4()), "service_id": str(uuid.uuid4()),
                      "organization_id": org, "expires_at": expires, "status": "open",
                      "attempt": 1},
            "reason_code": None, "outcome_code": None, "actor_role": "system",
            "referrer_updates": "milestones", "proposal_id": str(uuid.uuid4()),
            "occurred_at": now}
    return events.new_event(events.REFERRAL_STATUS_CHANGED, subject=rid, sequence=2,
                            source="referral-intake", data=data,
                            correlation_id=str(uuid.uuid4()))


def polls(batches: int) -> list[list[Any]]:
    """``batches`` polls of BATCH records from a stream where each referral submitted is
    offered LAG referrals later (so a poll mixes new referrals' submissions with earlier
    referrals' offers, as in the pipeline, whatever BATCH is, 1 included)."""
    now = datetime.now(UTC)
    at, expires = events.format_time(now), events.format_time(now + timedelta(hours=2))
    waiting = [str(uuid.uuid4()) for _ in range(LAG)]
    stream: list[events.Envelope] = []
    while len(stream) < batches * BATCH:
        fresh = str(uuid.uuid4())
        stream.append(_submitted(fresh, at))
        stream.append(_offered(waiting.pop(0), ORGS[len(stream) % len(ORGS)], at, expires))
        waiting.append(fresh)
    records = [SimpleNamespace(topic=env.topic, partition=0, offset=offset, key=env.key,
                               value=events.encode(env), headers=[])
               for offset, env in enumerate(stream[:batches * BATCH])]
    return [records[i:i + BATCH] for i in range(0, len(records), BATCH)]


def _recipients(db: Database) -> None:
    """The directory's organizations, one webhook, provider staff who chose e-mail."""
    with db.transaction() as s:
        s.execute(org_view.insert(), [
            {"organization_id": org, "channels": ["in_app", "email", "webhook"],
             "updated_at": datetime.now(UTC)} for org in ORGS])
        queries.register_webhook(s, ORGS[0], "https://hooks.example.org/referrals")
        s.execute(preferences.insert(), [
            {"user_id": f"staff-{i}", "role": "provider", "organization_id": org,
             "agency_id": None, "channels": ["in_app", "email"],
             "email": f"desk{i}@example.org", "sms_number": None,
             "updated_at": datetime.now(UTC)} for i, org in enumerate(ORGS[:2])])


def main() -> None:
    logs.configure("notifications")
    for handler in logging.getLogger().handlers:  # formatted as in production, discarded
        handler.stream = open(os.devnull, "w")  # noqa: SIM115
    with scratch_database("perf_notif") as (name, url):
        run_migrations(url, bootstrap.MIGRATIONS)
        db = Database(url, metadata)
        _recipients(db)
        (spec,) = consumers.consumer_specs(handlers.Options(email=True, sms=False))
        runner = ConsumerRunner(name=spec.name, db=db, consumer=None, producer=None,
                                topics=spec.topics, handlers=spec.handlers,
                                config=RunnerConfig(batch_size=100))
        statements = [0]
        event.listen(db.engine, "before_cursor_execute",
                     lambda *_a, **_k: statements.__setitem__(0, statements[0] + 1))
        with db.engine.connect() as conn:  # the pool's connection stays the same one
            conn.execute(text("SELECT 1"))
        for records in polls(3):  # warm: caches, the pool's connection
            runner.process_batch(records)
        rows = []
        for _ in range(RUNS):
            work = polls(BATCHES)
            n = sum(len(r) for r in work)
            statements[0] = 0
            pg0, cpu0 = backends_cpu_s(name), time.process_time()
            for records in work:
                runner.process_batch(records)
            cpu = time.process_time() - cpu0
            pg = backends_cpu_s(name) - pg0
            rows.append((cpu * 1000 / n, pg * 1000 / n, statements[0] / BATCHES))
            print(f"run: worker {rows[-1][0]:.3f} ms/event, PostgreSQL {rows[-1][1]:.3f} "
                  f"ms/event, {rows[-1][2]:.1f} statements/poll", flush=True)
        med = [statistics.median(r[i] for r in rows) for i in range(3)]
        print(f"median of {RUNS} runs ({BATCHES} polls of {BATCH}): worker {med[0]:.3f} "
              f"ms/event, PostgreSQL {med[1]:.3f} ms/event, {med[2]:.1f} statements/poll")
        if os.environ.get("PROFILE"):
            import cProfile
            import pstats
            work = polls(BATCHES)
            profile = cProfile.Profile(time.process_time)  # CPU, not waits
            profile.enable()
            for records in work:
                runner.process_batch(records)
            profile.disable()
            pstats.Stats(profile).sort_stats(os.environ.get("SORT", "cumulative")
                                             ).print_stats(60)
        db.dispose()


if __name__ == "__main__":
    main()
