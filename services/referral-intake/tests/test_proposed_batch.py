"""``routing.proposed`` in consumer batches (``handle_many``) leaves exactly what handling
each event alone does: the same scenario through ConsumerRunner one record at a time and in
one batch, on two fresh databases set up identically, gives the same rows in every table,
the same outbox events and the same dead-letters."""
from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from intake_testkit import Intake
from sqlalchemy import event, inspect, text

from referral_intake import actions, bootstrap, consumers, handlers
from servicekit import events
from servicekit.consumer import PermanentError
from servicekit.db import run_migrations
from servicekit.settings import Settings
from servicekit.testing import equivalence_runner, renamed, seeded_uuids

NOW = datetime.now(UTC).replace(microsecond=0)  # one clock for both runs: rows compare as is


def _proposal(rid: str, service: str, org: str, n: int) -> events.Envelope:
    return events.new_event(events.ROUTING_PROPOSED, subject=rid, sequence=n, source="matching",
                            correlation_id=f"corr-{n}", data={
                                "referral_id": rid, "attempt": 1, "service_id": service,
                                "organization_id": org, "score": 1.0, "reasons": [],
                                "eliminated": {}, "proposed_at": "2026-01-01T00:00:00Z"})


def _setup(it: Intake) -> dict[str, str]:
    """Referrals in every state a proposal may meet, with uuids seeded by the caller."""
    ids = {name: it.submit()["id"] for name in ("fresh1", "fresh2", "twice", "offered",
                                                 "cancelled", "accepted", "exhaust")}
    it.propose(ids["offered"], "svc-known", "org-a")
    it.propose(ids["accepted"], "svc-acc", "org-acc")
    assert it.post(f"/v1/referrals/{ids['accepted']}/accept",
                   it.provider("org-acc")).status_code == 200
    assert it.post(f"/v1/referrals/{ids['cancelled']}/cancel",
                   it.officer()).status_code == 200
    it.propose(ids["cancelled"], "svc-gone", "org-b")  # voided: services row, no offer
    return ids


def _records(ids: dict[str, str]) -> list[Any]:
    envs = [
        _proposal(ids["fresh1"], "svc-shared", "org-s", 1),
        _proposal(ids["twice"], "svc-t1", "org-t1", 2),
        _proposal(ids["offered"], "svc-known", "org-a", 3),      # already offered: void
        _proposal(ids["cancelled"], "svc-c", "org-c", 4),         # closed: void
        _proposal(ids["twice"], "svc-t2", "org-t2", 5),          # second in one batch: void
        _proposal(ids["accepted"], "svc-acc", "org-acc", 6),      # tried service, accepted
        _proposal(str(uuid.UUID(int=7, version=4)), "svc-x", "org-x", 7),  # unknown referral
        _proposal(ids["fresh2"], "svc-shared", "org-s", 8),       # same service again
        _proposal(ids["fresh2"], "svc-gone", "org-moved", 9),     # known service, new org
    ]
    exhausted = events.new_event(events.ROUTING_EXHAUSTED, subject=ids["exhaust"], sequence=10,
                                 source="matching", correlation_id="corr-10", data={
                                     "referral_id": ids["exhaust"], "attempt": 1,
                                     "eliminated": {}, "candidates_considered": 0,
                                     "reasons": [], "occurred_at": "2026-01-01T00:00:00Z"})
    envs[5:5] = [exhausted, _proposal(ids["exhaust"], "svc-e", "org-e", 11)]  # a run splits
    envs.append(envs[0])  # redelivered: the inbox skips it
    return [SimpleNamespace(topic=events.ROUTING_DECISIONS, partition=0, offset=i,
                            key=e.subject.encode(), value=events.encode(e), headers=[])
            for i, e in enumerate(envs)]


def _run(it: Intake, batched: bool, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    with seeded_uuids(monkeypatch, 42):
        ids = _setup(it)
        records = _records(ids)
    spec = consumers.consumer_specs(it.ctx)[0]
    assert hasattr(spec.handlers[events.ROUTING_PROPOSED], "handle_many")
    runner, producer, many = equivalence_runner(spec, it.db, events.ROUTING_PROPOSED, batched,
                                                monkeypatch)
    # two polls: the first batch commits through handle_many (runs of 5 and 2 events
    # around the exhausted one); the second meets the unknown referral, is rolled back and
    # handled one record at a time, which dead-letters that record alone
    unknown = next(i for i, r in enumerate(records)
                   if events.decode(r.value).data.get("service_id") == "svc-x")
    runner.process_batch(records[:unknown])
    assert many == ([5, 2] if batched else [])
    runner.process_batch(records[unknown:])
    assert many == ([5, 2] if batched else [])
    return {"tables": _tables(it), "events": _events(it),
            "dead": [(t, events.decode(v).id) for t, v in producer.sent], "ids": ids}


_RANDOM = {"subjects", "audit_log", "audit_head", "inbox"}  # nonces, hash chains, claim times


def _tables(it: Intake) -> dict[str, list[tuple[Any, ...]]]:
    found = {}
    with it.db.engine.connect() as c:
        for name in sorted(inspect(c).get_table_names()):
            columns = [col["name"] for col in inspect(c).get_columns(name)]
            if name in _RANDOM or name == "outbox":  # the outbox: compared as events
                found[name] = [c.execute(text(f'SELECT count(*) FROM "{name}"')).scalar()]
                continue
            keep = [col for col in columns if not col.endswith("_ct")]
            rows = [tuple(r) for r in c.execute(text(f'SELECT {", ".join(keep)} FROM "{name}"'))]
            if keep[0] == "id" and rows and isinstance(rows[0][0], int):
                # serial ids: their order (a rolled back batch leaves gaps)
                rows = [(rank, *r[1:]) for rank, r in enumerate(sorted(rows))]
            found[name] = sorted(rows, key=repr)
    return found


def _events(it: Intake) -> list[tuple[Any, ...]]:
    return [(e.type, e.subject, e.sequence, e.source, e.correlation_id, e.causation_id,
             e.data) for e in it.events()]


def _canonical(run: dict[str, Any]) -> dict[str, Any]:
    """Offer ids are random (taken in a different order by the two paths): name each by
    its proposal, which every offer row and every status change of a proposal carries."""
    names = {}
    for _t, _s, _q, _src, _c, _cause, data in run["events"]:
        if data.get("offer") and data.get("proposal_id"):
            names[data["offer"]["offer_id"]] = "offer-of-" + data["proposal_id"]
    assert names
    return {"tables": {k: sorted((renamed(r, names) for r in rows), key=repr)
                       for k, rows in run["tables"].items()},
            "events": renamed(run["events"], names), "dead": run["dead"]}


def test_a_batch_of_proposals_leaves_what_each_alone_would(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "_now", lambda: NOW)
    monkeypatch.setattr(actions, "_now", lambda: NOW)
    runs = []
    for batched in (False, True):
        settings = make_settings("referral-intake")
        run_migrations(settings.database_url, bootstrap.MIGRATIONS)
        it = Intake(settings)
        try:
            runs.append(_run(it, batched, monkeypatch))
        finally:
            it.db.dispose()
    single, batch = runs
    assert single["ids"] == batch["ids"]
    ids = single["ids"]
    # the scenario is what it claims: offers made, proposals voided, one dead-letter
    answers: dict[str, list[tuple[str, str | None]]] = {}
    for t, _s, _q, _src, _c, _cause, d in single["events"]:
        if t == events.REFERRAL_STATUS_CHANGED and d["proposal_id"]:
            answers.setdefault(d["referral_id"], []).append((d["to_status"], d["reason_code"]))
    void = "proposal_void"
    assert answers[ids["fresh1"]] == answers[ids["exhaust"]] == [("offered", None)]
    assert answers[ids["fresh2"]] == [("offered", None), ("offered", void)]
    assert answers[ids["twice"]] == [("offered", None), ("offered", void)]
    assert answers[ids["offered"]] == [("offered", None), ("offered", void)]
    assert answers[ids["cancelled"]] == [("cancelled", void), ("cancelled", void)]
    assert answers[ids["accepted"]] == [("offered", None), ("accepted", void)]
    assert [t for t, _id in single["dead"]] == [events.dlq_topic(events.ROUTING_DECISIONS)]
    services = {r[0]: r[1] for r in single["tables"]["services"]}
    assert services["svc-gone"] == "org-moved" and services["svc-shared"] == "org-s"
    # and the batch left exactly the same
    a, b = _canonical(single), _canonical(batch)
    assert a["tables"].keys() == b["tables"].keys()
    for name in a["tables"]:
        assert a["tables"][name] == b["tables"][name], name
    assert a["events"] == b["events"]
    assert a["dead"] == b["dead"]


def test_an_unknown_referral_fails_the_batch_before_any_write(intake: Intake) -> None:
    rid = intake.submit()["id"]
    envs = [_proposal(rid, "svc-1", "org-1", 1),
            _proposal(str(uuid.uuid4()), "svc-2", "org-2", 2)]
    statements: list[str] = []
    event.listen(intake.db.engine, "before_cursor_execute",
                 lambda *a, **k: statements.append(a[2]))
    with pytest.raises(PermanentError), intake.db.transaction() as s:
        handlers.on_routing_proposed_many(s, intake.ctx, envs)
    assert not any(q.lstrip().upper().startswith(("INSERT", "UPDATE", "WITH"))
                   for q in statements)
    assert intake.sql("SELECT status FROM referrals")[0][0] == "submitted"


def test_a_batch_of_proposals_takes_a_handful_of_statements(intake: Intake) -> None:
    rids = [intake.submit()["id"] for _ in range(6)]
    envs = [_proposal(rid, f"svc-{i % 2}", "org-1", i + 1) for i, rid in enumerate(rids)]
    envs.append(_proposal(rids[0], "svc-9", "org-9", 9))
    statements: list[str] = []
    event.listen(intake.db.engine, "before_cursor_execute",
                 lambda *a, **k: statements.append(a[2]))
    with intake.db.transaction() as s:
        handlers.on_routing_proposed_many(s, intake.ctx, envs)
    assert len(statements) == 4  # lock, state, sequences, writes
    got = [(e.subject, e.sequence, e.data["reason_code"])
           for e in intake.events(events.REFERRAL_STATUS_CHANGED)]
    assert got == [(rid, 2, None) for rid in rids] + [(rids[0], 3, "proposal_void")]
