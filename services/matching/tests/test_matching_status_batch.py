"""Status changes in consumer batches (``StatusChangedHandler.handle_many``) leave exactly what
handling each event alone does. A mixed stream — submissions, then intake's answers to the
decisions found in the database (offers answering proposals, ``unmatched``, acceptances,
declines, expiries, withdrawals, a voided proposal, supervisors' manual assignments, closes,
several changes of one referral in a row, a redelivery, an unknown referral, a change its
handler rejects) — goes through ConsumerRunner one record at a time and in batches, on two
fresh databases set up identically: every table, the outbox events and the dead-letters
must be the same."""
from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from matching_factories import referral_submitted, service_upserted
from test_matching_handlers import routing_events
from test_matching_runner_batch import _canonical, _database, _event_ids, _events, _tables

from matching import consumers, handlers
from matching.decide import Policy
from matching.index import DirectoryIndex
from servicekit import events
from servicekit.consumer import PermanentError
from servicekit.db import Database
from servicekit.settings import Settings
from servicekit.testing import equivalence_runner, seeded_uuids

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)


def _rid(n: int) -> str:
    return str(uuid.UUID(int=n, version=4))


BAD = _rid(99)  # its status changes are rejected by the handler
UNKNOWN = (_rid(50), _rid(51))  # never submitted to matching


class Intake:
    """referral-intake's side of the scenario: status changes answering what matching
    decided (read from the database of the run), with ids, sequences and times that do not
    depend on the run, so both runs get the same events but for the proposal ids."""

    def __init__(self, db: Database):
        self.db = db
        self.n = 0
        self.status: dict[str, str] = {}
        self.holder: dict[str, str] = {}
        self.answered: set[str] = set()

    def change(self, rid: str, to: str, *, service: str | None = None,
               offer_status: str = "open", reason: str | None = None,
               proposal: str | None = None, actor: str = "system") -> events.Envelope:
        self.n += 1
        at = NOW + timedelta(seconds=self.n)
        offer = None if service is None else {
            "offer_id": str(uuid.UUID(int=10_000 + self.n, version=4)), "service_id": service,
            "organization_id": "org-harbour", "expires_at": at + timedelta(hours=4),
            "status": offer_status, "attempt": 1}
        data = {"referral_id": rid, "short_id": "R-7F3K", "need": "housing",
                "urgency": "urgent", "agency_id": "metro-pd", "officer_ref": "off-5b2e91",
                "from_status": self.status.get(rid, "submitted"), "to_status": to,
                "offer": offer, "reason_code": reason, "outcome_code": None,
                "actor_role": actor, "referrer_updates": "milestones",
                "proposal_id": proposal, "occurred_at": at}
        # after the submission's sequence (the factories count from 1 in this process)
        env = events.new_event(events.REFERRAL_STATUS_CHANGED, subject=rid,
                               sequence=1_000_000 + self.n,
                               data=data, source="referral-intake", time=at)
        self.status[rid] = to
        if service is not None and to == "offered":
            self.holder[rid] = service
        return dataclasses.replace(env, id=str(uuid.UUID(int=20_000 + self.n, version=4)),
                                   correlation_id=f"corr-status-{self.n}")

    def fresh_decisions(self, everything: bool = False) -> list[events.Envelope]:
        """The decisions not answered yet (``everything``: the latest of all), by referral
        id, the latest one of each."""
        latest: dict[str, events.Envelope] = {}
        for e in routing_events(self.db):
            if everything or e.id not in self.answered:
                latest[e.subject] = e
        self.answered |= {e.id for e in latest.values()}
        return [latest[rid] for rid in sorted(latest)]

    def answer(self, decision: events.Envelope) -> events.Envelope:
        """An offer for a proposal, ``unmatched`` for an exhaustion."""
        if decision.type == events.ROUTING_EXHAUSTED:
            return self.change(decision.subject, "unmatched")
        return self.change(decision.subject, "offered", service=decision.data["service_id"],
                           proposal=decision.id)

    def settle(self, rid: str, to: str, offer_status: str, reason: str | None = None
               ) -> events.Envelope:
        service = self.holder.pop(rid) if to != "accepted" else self.holder[rid]
        return self.change(rid, to, service=service, offer_status=offer_status, reason=reason)

    def move(self, rid: str, to: str) -> events.Envelope:
        return self.change(rid, to)


def _submission(n: int, **kwargs: Any) -> events.Envelope:
    return dataclasses.replace(referral_submitted(_rid(n), **kwargs), correlation_id=f"corr-{n}")


def _first_poll() -> list[events.Envelope]:
    """The directory and the submissions (one redelivered): more referrals than places;
    BAD's first, so that it is offered a place."""
    services = [service_upserted("svc-one", km_north=0.5, capacity=1),
                service_upserted("svc-two", km_north=1.0, capacity=2),
                service_upserted("svc-three", km_north=1.5, capacity=4),
                service_upserted("svc-food", km_north=0.2, categories=["food"], capacity=1),
                service_upserted("svc-legal", categories=["legal"])]  # only assigned by hand
    subs = [_submission(n, need="food" if n % 4 == 0 else "housing") for n in range(1, 11)]
    return [*services, _submission(99), *subs[:3], subs[1], *subs[3:]]


def _offers(intake: Intake) -> list[events.Envelope]:
    """Every decision answered (runs of offers split by ``unmatched``s), one referral's offer
    accepted and begun right after it, an offer redelivered, and a supervisor's assignments
    of two referrals matching never saw to one service."""
    out: list[events.Envelope] = []
    for decision in intake.fresh_decisions():
        if decision.subject == BAD:
            continue  # answered last (``_late``)
        answer = intake.answer(decision)
        out.append(answer)
        if decision.subject == _rid(1):
            out += [intake.settle(_rid(1), "accepted", "accepted"),
                    intake.move(_rid(1), "in_progress")]
        if decision.subject == _rid(2):
            out.append(answer)  # redelivered
        if decision.subject == _rid(5):
            out += [intake.change(rid, "offered", service="svc-legal", actor="supervisor")
                    for rid in UNKNOWN]
    assert {e.data["to_status"] for e in out} >= {"offered", "unmatched"}
    return out


def _answers(intake: Intake) -> list[events.Envelope]:
    """Declined, expired, withdrawn, accepted (then moved on three times in a row), a case
    closed (a freed place), a supervisor assigning an unmatched referral by hand and, the
    service declining, at once to another (as an older intake did, without passing through
    ``submitted``: still an answer of the first service), and a supervisor's reroute of an
    offer followed by an assignment (as intake does)."""
    offered = sorted(rid for rid, s in intake.status.items()
                     if s == "offered" and rid not in (*UNKNOWN, BAD))
    unmatched = sorted(rid for rid, s in intake.status.items() if s == "unmatched")
    assert len(offered) >= 6 and unmatched
    declined, expired, withdrawn, accepted, begun, rerouted = offered[:6]
    return [intake.settle(declined, "submitted", "declined", "no_capacity"),
            intake.change(unmatched[0], "offered", service="svc-two", actor="supervisor"),
            intake.change(unmatched[0], "offered", service="svc-three", actor="supervisor",
                          reason="no_capacity"),
            intake.settle(expired, "submitted", "expired", "expired"),
            intake.settle(accepted, "accepted", "accepted"),
            intake.move(accepted, "in_progress"), intake.move(accepted, "on_hold"),
            intake.move(accepted, "in_progress"),
            intake.settle(begun, "accepted", "accepted"),
            intake.move(_rid(1), "completed"),
            intake.settle(withdrawn, "cancelled", "withdrawn", "withdrawn"),
            intake.settle(rerouted, "submitted", "withdrawn", "rerouted"),
            intake.change(rerouted, "offered", service="svc-two", actor="supervisor")]


def _second_answers(intake: Intake) -> list[events.Envelope]:
    """The new decisions answered (the first voided instead), then cases moved on."""
    fresh = intake.fresh_decisions()
    void = next(d for d in fresh if d.type == events.ROUTING_PROPOSED)
    out = []
    for decision in fresh:
        if decision is void:
            rid = decision.subject
            out.append(intake.change(rid, intake.status[rid], reason="proposal_void",
                                     proposal=decision.id))
        else:
            out.append(intake.answer(decision))
    cases = sorted(rid for rid, s in intake.status.items()
                   if s in ("accepted", "in_progress") and rid not in UNKNOWN)
    return [*out, *(intake.move(rid, "completed") for rid in cases)]


def _late(intake: Intake) -> list[events.Envelope]:
    """A run with the offer the handler rejects: it fails and is handled one record at a
    time (BAD's offer dead-lettered)."""
    unmatched = sorted(rid for rid, s in intake.status.items() if s == "unmatched")
    [bad] = [d for d in intake.fresh_decisions(everything=True) if d.subject == BAD]
    return [intake.change(unmatched[0], "offered", service="svc-one", actor="supervisor"),
            intake.answer(bad), intake.move(unmatched[0], "accepted")]


ANSWERS = (_offers, _answers, _second_answers, _late)


def _run(db: Database, first: list[events.Envelope], batched: bool,
         monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    spec = consumers.consumer_specs(Policy(index=DirectoryIndex()))[0]
    runner, producer, many = equivalence_runner(spec, db, events.REFERRAL_STATUS_CHANGED,
                                                batched, monkeypatch)
    intake = Intake(db)
    sent: list[events.Envelope] = []
    for n, build in enumerate([lambda _intake: first, *ANSWERS]):
        # a clock both runs read alike, each read a new time; constant in the poll whose
        # batch fails (the runner handles it again, reading the clock once more per event)
        ticks = iter(range(1000 * n, 1000 * (n + 1)))
        monkeypatch.setattr(handlers, "_now", (lambda: NOW) if build is _late else (
            lambda t=ticks: NOW + timedelta(milliseconds=next(t))))
        envs = build(intake)
        sent += envs
        poll = [SimpleNamespace(topic=events.REFERRAL_EVENTS, partition=0, offset=i, key=b"k",
                                value=events.encode(e), headers=[])
                for i, e in enumerate(envs)]
        with seeded_uuids(monkeypatch, n):
            runner.process_batch(poll)
    # the run with BAD's offer failed and was handled one record at a time; the others
    # returned, some of several changes
    assert (max(many) >= 5) if batched else many == []
    return {"tables": _tables(db), "events": _events(db), "sent": sent,
            "dead": [(t, events.decode(v).subject) for t, v in producer.sent]}


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_batches_of_status_changes_leave_what_each_alone_would(
        dialect: str, make_settings: Callable[..., Settings], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    real_followed = handlers._followed

    def followed(service_id: Any, offered_at: Any, d: dict[str, Any]) -> Any:
        if d["referral_id"] == BAD:
            raise PermanentError("rejected for the test")
        return real_followed(service_id, offered_at, d)

    monkeypatch.setattr(handlers, "_followed", followed)
    first = _first_poll()  # the same directory and submissions for both runs
    runs = []
    for batched in (False, True):
        db = _database(dialect, batched, make_settings, tmp_path)
        try:
            run = _run(db, first, batched, monkeypatch)
            run["event_ids"] = _event_ids(db)
            runs.append(run)
        finally:
            db.dispose()
    single, batch = (_canonical(r) for r in runs)
    assert single == batch
    # the scenario is what it claims: every kind of change was sent, places were freed and
    # taken again, the rejected change was dead-lettered alone
    sent = runs[0]["sent"]
    kinds = {(e.data["from_status"], e.data["to_status"], e.data["reason_code"])
             for e in sent if e.type == events.REFERRAL_STATUS_CHANGED}
    assert {("submitted", "offered", None), ("offered", "accepted", None),
            ("offered", "submitted", "no_capacity"), ("offered", "submitted", "expired"),
            ("offered", "cancelled", "withdrawn"), ("unmatched", "offered", None),
            ("offered", "offered", "no_capacity"), ("offered", "submitted", "rerouted"),
            ("in_progress", "completed", None)} <= kinds
    assert any(r == "proposal_void" for _f, _t, r in kinds)
    assert [s for _t, s in single["dead"]] == [BAD]
    attempts = [d for t, _s, _q, _src, _c, _cause, d in single["events"]
                if t == events.ROUTING_PROPOSED]
    assert max(d["attempt"] for d in attempts) >= 2
    loads = {r[0]: r[1:3] for r in single["tables"]["service_load"]}
    assert loads["svc-three"][0] >= 1 and any(a for _o, a in loads.values())
