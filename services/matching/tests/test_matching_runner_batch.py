"""Submissions in consumer batches (``SubmittedHandler.handle_many``) leave exactly what
handling each event alone does: the same records through ConsumerRunner one at a time and in
batches, on two fresh databases set up identically, give the same rows in every table, the
same outbox events (with the correlation and causation the runner gives each event alone)
and the same dead-letters."""
from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from matching_factories import referral_submitted, service_upserted, status_changed
from sqlalchemy import inspect, text

from matching import bootstrap, consumers, handlers, tables
from matching.decide import DEFAULT_POLICY, Policy
from matching.index import DirectoryIndex
from servicekit import events
from servicekit.consumer import PermanentError
from servicekit.db import Database, run_migrations
from servicekit.settings import Settings
from servicekit.testing import equivalence_runner, renamed, seeded_uuids

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)  # one clock for both runs: rows compare as is
BAD = str(uuid.UUID(int=99, version=4))  # a submission its handler rejects


def _submission(n: int, **kwargs: Any) -> events.Envelope:
    rid = BAD if n == 99 else str(uuid.UUID(int=n, version=4))
    env = referral_submitted(rid, **kwargs)
    return dataclasses.replace(env, correlation_id=f"corr-{n}")


def _records() -> list[list[Any]]:
    """Three polls. Capacities small enough that the run's own reservations change later
    decisions; a status change between two runs of submissions frees a place; before the
    third, another worker changes the directory (``_elsewhere``), and that poll's run
    submits one referral twice and one already known."""
    services = [service_upserted("svc-one", km_north=0.5, capacity=1),
                service_upserted("svc-two", km_north=1.0, capacity=2),
                service_upserted("svc-youth", km_north=0.2, age_max=17),
                service_upserted("svc-food", km_north=0.2, categories=["food"], capacity=1)]
    subs = [_submission(i, need="food" if i % 3 == 0 else "housing") for i in range(1, 8)]
    freed = dataclasses.replace(status_changed(
        subs[0].subject, "offered", "submitted", service_id="svc-one",
        reason_code="no_capacity"), correlation_id="corr-freed")
    later = [_submission(i) for i in range(8, 11)]
    first = [*services, *subs[:4], subs[1], *subs[4:], freed, *later]  # subs[1] redelivered
    second = [_submission(11), _submission(99), _submission(12), subs[2]]  # BAD rolls back
    third = [_submission(13), _submission(14, need="food"), _submission(13), _submission(3),
             _submission(15), _submission(16)]
    return [[SimpleNamespace(topic=events.REFERRAL_EVENTS, partition=0, offset=i, key=b"k",
                             value=events.encode(e), headers=[]) for i, e in enumerate(poll)]
            for poll in (first, second, third)]


def _changes() -> list[events.Envelope]:
    """What ``_elsewhere`` stores (built once, after ``_records``: newer snapshots)."""
    return [service_upserted("svc-one", km_north=300.0, capacity=1),
            service_upserted("svc-two", km_north=1.0, capacity=4),
            service_upserted("svc-three", km_north=0.8, capacity=3)]


def _elsewhere(db: Database, changes: list[events.Envelope]) -> None:
    """Another worker (handlers without this worker's index) moves svc-one out of reach,
    gives svc-two room again, adds svc-three, and has referral 13 try svc-three before its
    submission arrives: this worker's index learns of the services only from
    ``directory_changes`` (its catch-up), and reads the tried service from the database."""
    with db.transaction() as session:
        for env in changes:
            handlers.on_service_upserted(session, env, DEFAULT_POLICY)
        tables.mark_tried(session, str(uuid.UUID(int=13, version=4)), "svc-three", NOW)


def _run(db: Database, records: list[list[Any]], changes: list[events.Envelope], batched: bool,
         monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    spec = consumers.consumer_specs(Policy(index=DirectoryIndex()))[0]
    runner, producer, many = equivalence_runner(spec, db, events.REFERRAL_SUBMITTED, batched,
                                                monkeypatch)
    with seeded_uuids(monkeypatch, 7):
        for i, poll in enumerate(records):
            if i == 2:
                _elsewhere(db, changes)
            runner.process_batch(poll)
    # a run of 7 (the redelivered one is a duplicate), then 3 after the status change; the second
    # poll's run failed on BAD and was handled one record at a time; the third's run of 6
    assert many == ([7, 3, 6] if batched else [])
    return {"tables": _tables(db), "events": _events(db),
            "dead": [(t, events.decode(v).id) for t, v in producer.sent]}


_RANDOM = {"inbox"}  # claim times
_NOT_COMPARED = {"id", "created_at", "claimed_at", "processed_at",  # random, clock
                 "xact"}  # directory_changes: the writer's transaction id


def _tables(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    found = {}
    with db.engine.connect() as c:
        for name in sorted(inspect(c).get_table_names()):
            if name in _RANDOM or name == "outbox":  # the outbox: compared as events
                found[name] = [c.execute(text(f'SELECT count(*) FROM "{name}"')).scalar()]
                continue
            keep = [col["name"] for col in inspect(c).get_columns(name)
                    if col["name"] not in _NOT_COMPARED]
            rows = [tuple(r) for r in c.execute(text(
                f'SELECT {", ".join(keep)} FROM "{name}"'))]
            found[name] = sorted(rows, key=repr)
    return found


def _events(db: Database) -> list[tuple[Any, ...]]:
    outbox = tables.metadata.tables["outbox"]
    with db.engine.connect() as c:
        found = [events.decode(r.payload) for r in c.execute(
            outbox.select().order_by(outbox.c.id))]
    return sorted((e.type, e.subject, e.sequence, e.source, e.correlation_id, e.causation_id,
                   e.data) for e in found)


def _canonical(run: dict[str, Any]) -> dict[str, Any]:
    """Event ids are random (taken in a different order by the two paths): name each by its
    subject and sequence."""
    with_ids = run["event_ids"]
    return {"tables": {k: sorted((renamed(r, with_ids) for r in rows), key=repr)
                       for k, rows in run["tables"].items()},
            "events": run["events"], "dead": run["dead"]}


def _event_ids(db: Database) -> dict[str, str]:
    outbox = tables.metadata.tables["outbox"]
    with db.engine.connect() as c:
        found = [events.decode(r.payload) for r in c.execute(outbox.select())]
    return {e.id: f"event-{e.subject}-{e.sequence}" for e in found}


def _database(dialect: str, batched: bool, make_settings: Callable[..., Settings],
              tmp_path: Path) -> Database:
    """A fresh, migrated matching database for one of an equivalence test's two runs."""
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path / f'matching-{batched}.db'}"
    else:
        url = make_settings("matching").database_url
    run_migrations(url, bootstrap.MIGRATIONS)
    return Database(url, tables.metadata)


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_batches_of_submissions_leave_what_each_alone_would(
        dialect: str, make_settings: Callable[..., Settings], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "_now", lambda: NOW)
    real_route = handlers.route

    def route(session: Any, referral_id: str, *args: Any, **kwargs: Any) -> Any:
        if referral_id == BAD:
            raise PermanentError("rejected for the test")
        return real_route(session, referral_id, *args, **kwargs)

    monkeypatch.setattr(handlers, "route", route)
    records = _records()
    changes = _changes()
    runs = []
    for batched in (False, True):
        db = _database(dialect, batched, make_settings, tmp_path)
        try:
            run = _run(db, records, changes, batched, monkeypatch)
            run["event_ids"] = _event_ids(db)
            runs.append(run)
        finally:
            db.dispose()
    single, batch = (_canonical(r) for r in runs)
    assert single == batch
    # the scenario is what it claims: a decision for each submission but BAD (dead-lettered
    # alone), capacity spent, each event caused by the event it answers
    sent = {events.decode(r.value).id: events.decode(r.value) for poll in records
            for r in poll}
    assert [sent[i].subject for _t, i in single["dead"]] == [BAD]
    decided = {(t, s) for t, s, *_ in single["events"]}
    assert len({s for _t, s in decided}) == 16 and BAD not in {s for _t, s in decided}
    assert {t for t, _s in decided} == {events.ROUTING_PROPOSED, events.ROUTING_EXHAUSTED}
    for _t, subject, _q, _src, corr, cause, _d in single["events"]:
        assert sent[cause].subject == subject and corr == sent[cause].correlation_id
    assert any(sent[cause].type == events.REFERRAL_STATUS_CHANGED
               for *_, cause, _d in single["events"])
    # the third poll's decisions follow the other worker's changes
    third = {events.decode(r.value).id for r in records[2]}
    chosen = {(s, d.get("service_id")) for _t, s, _q, _src, _c, cause, d in single["events"]
              if cause in third}
    assert len(chosen) == 4 and (str(uuid.UUID(int=13, version=4)), "svc-three") not in chosen
    assert {"svc-two", "svc-three"} <= {sid for _s, sid in chosen} and (
        "svc-one" not in {sid for _s, sid in chosen})
