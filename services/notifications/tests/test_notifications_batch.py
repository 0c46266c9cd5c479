"""Batched consumption: a poll's events handled in one transaction (inbox.claim_many, the
notifications handler's handle_many) leave exactly what handling them one at a time leaves,
on PostgreSQL and on SQLite (the embedded mode)."""
from __future__ import annotations

import uuid
from collections import namedtuple
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from notifications_fixtures import (
    AGENCY,
    ORG,
    OTHER_ORG,
    envelope,
    offer,
    service_upserted,
    sla_breached,
    status_changed,
    submitted,
)
from sqlalchemy import event, select

from notifications import bootstrap, consumers, domain, handlers, queries
from notifications.tables import (
    deliveries,
    metadata,
    notifications,
    offer_refusals,
    offer_reminders,
    preferences,
)
from servicekit import events, inbox
from servicekit.consumer import ConsumerRunner, RunnerConfig
from servicekit.db import Database, run_migrations
from servicekit.settings import Settings

pytestmark = pytest.mark.integration

STATUS = events.REFERRAL_STATUS_CHANGED
OFFICER = "officer-CANARY-batch"
Record = namedtuple("Record", "topic partition offset key value headers")


@pytest.fixture(params=["postgresql", "sqlite"])
def make_db(request: pytest.FixtureRequest, make_settings: Callable[..., Settings],
            tmp_path: Path) -> Iterator[Callable[[], Database]]:
    """Fresh migrated notifications databases of one dialect."""
    made: list[Database] = []

    def build() -> Database:
        if request.param == "postgresql":
            url = make_settings("notifications").database_url
        else:
            url = f"sqlite:///{tmp_path / f'n-{uuid.uuid4().hex[:6]}.db'}"
        run_migrations(url, bootstrap.MIGRATIONS)
        made.append(Database(url, metadata))
        return made[-1]

    yield build
    for db in made:
        db.dispose()


def _runner(db: Database, batch_size: int = 100) -> ConsumerRunner:
    (spec,) = consumers.consumer_specs(handlers.Options(email=True, sms=False))
    return ConsumerRunner(name="notifications", db=db, consumer=None, producer=None,
                          topics=spec.topics, handlers=spec.handlers,
                          config=RunnerConfig(batch_size=batch_size))


def _records(envs: list[events.Envelope]) -> list[Record]:
    return [Record(env.topic, 0, offset, env.key, events.encode(env), [])
            for offset, env in enumerate(envs)]


def _recipients(db: Database) -> None:
    """A webhook for ORG and staff who chose e-mail: deliveries are part of what's compared."""
    with db.transaction() as s:
        queries.register_webhook(s, ORG, "https://hooks.example.org/referrals")
        s.execute(preferences.insert(), [
            {"user_id": "staff-1", "role": "provider", "organization_id": ORG, "agency_id": None,
             "channels": ["in_app", "email"], "email": "desk@harbor.example.org",
             "sms_number": None, "updated_at": events.parse_time("2026-03-01T00:00:00Z")},
            {"user_id": OFFICER, "role": "officer", "organization_id": None,
             "agency_id": AGENCY, "channels": ["in_app", "email"],
             "email": "ortiz@metro-pd.example.org", "sms_number": None,
             "updated_at": events.parse_time("2026-03-01T00:00:00Z")}])


def _story() -> tuple[list[events.Envelope], dict[str, str]]:
    """Events whose effects depend on their order: refusal counts, reminders scheduled then
    cancelled, consent revoked and erasure between two events of one referral, directory
    channels changed between two offers, redeliveries and a stale event."""
    a, b, c, d, e = (str(uuid.uuid4()) for _ in range(5))
    out: list[events.Envelope] = []
    seq: dict[str, int] = {}

    def change(rid: str, to: str, o: dict[str, Any] | None, frm: str = "submitted",
               updates: str = "milestones", reason: str | None = None) -> events.Envelope:
        seq[rid] = seq.get(rid, 0) + 1
        data = status_changed(rid, from_status=frm, to_status=to, offer_=o,
                              referrer_updates=updates, reason_code=reason)
        env = envelope(STATUS, {**data, "officer_ref": OFFICER}, seq[rid])
        out.append(env)
        return env

    for status in ("declined", "expired", "declined", "declined"):  # alert on the third only
        made = offer()
        change(a, "offered", made)
        refused = change(a, "submitted", {**made, "status": status}, frm="offered",
                         reason="no_capacity" if status == "declined" else "expired")
        out.append(refused)  # redelivered at once: a duplicate inside the batch
    stale = envelope(STATUS, status_changed(a, to_status="unmatched"), 2)
    out.append(stale)  # an old sequence number: dropped
    change(b, "offered", offer(), updates="full")
    seq[b] += 1
    out.append(envelope(events.REFERRAL_CONSENT_CHANGED, {
        "referral_id": b, "actor_role": "officer", "occurred_at": "2026-03-03T00:00:00Z",
        "consent": {"share_with_provider": True, "referrer_updates": "none",
                    "contact_methods": []}}, seq[b]))
    change(b, "accepted", offer(status="accepted"), frm="offered", updates="none")
    first = change(c, "offered", offer())
    out.append(service_upserted(ORG, ["in_app"], "2026-03-02T10:00:00Z"))  # webhooks off
    seq[c] += 1
    out.append(envelope(events.REFERRAL_ERASED, {"referral_id": c,
                                                 "occurred_at": "2026-03-03T00:00:00Z"}, seq[c]))
    change(c, "cancelled", {**first.data["offer"], "status": "withdrawn"}, frm="offered")
    change(d, "offered", offer(), updates="full")
    change(d, "offered", offer(org=OTHER_ORG), frm="submitted", updates="full")
    change(d, "unmatched", None, updates="full")
    late = offer(status="expired")  # its expiry arrives before its offer (timers race)
    change(e, "submitted", late, frm="offered", reason="expired")
    change(e, "offered", {**late, "status": "open"})  # so its reminder stays scheduled
    out.append(envelope(events.REFERRAL_SUBMITTED, submitted("full")))
    out.append(envelope(events.REFERRAL_SLA_BREACHED, sla_breached()))
    out.append(out[0])  # redelivered much later
    return out, {"refused": a, "revoked": b, "erased": c, "full": d, "stale": stale.id}


def _state(db: Database) -> dict[str, Any]:
    """Everything the handlers and the inbox leave, without generated ids and clocks."""
    n = notifications.c
    with db.engine.connect() as conn:
        notes = sorted(tuple(r) for r in conn.execute(select(
            n.event_id, n.recipient_kind, n.recipient_id, n.channel, n.kind, n.referral_id,
            n.short_id, n.title, n.body, n.link)))
        sent = sorted(tuple(r) for r in conn.execute(select(
            n.event_id, n.recipient_kind, n.recipient_id, deliveries.c.channel,
            deliveries.c.target_kind, deliveries.c.status, deliveries.c.attempt)
            .join(notifications, n.id == deliveries.c.notification_id)))
        reminders = sorted(tuple(r) for r in conn.execute(select(
            offer_reminders.c.offer_id, offer_reminders.c.status, offer_reminders.c.remind_at)))
        refusals = sorted(tuple(r) for r in conn.execute(select(offer_refusals)))
        tables = metadata.tables
        claimed = sorted(r[0] for r in conn.execute(select(tables["inbox"].c.event_id)))
        sequences = sorted(tuple(r) for r in conn.execute(select(
            tables["aggregate_sequence"].c.source, tables["aggregate_sequence"].c.subject,
            tables["aggregate_sequence"].c.last_sequence)))
    return {"notifications": notes, "deliveries": sent, "reminders": reminders,
            "refusals": refusals, "inbox": claimed, "sequences": sequences}


def test_a_batch_leaves_what_handling_its_events_one_at_a_time_leaves(
        make_db: Callable[[], Database], monkeypatch: pytest.MonkeyPatch) -> None:
    story, ids = _story()
    records = _records(story)
    one_by_one, batched = make_db(), make_db()
    for db in (one_by_one, batched):
        _recipients(db)
    single = _runner(one_by_one)
    for record in records:
        single.process(record)
    runs: list[int] = []
    real = handlers.ReferralEvents.handle_many
    monkeypatch.setattr(handlers.ReferralEvents, "handle_many",
                        lambda self, s, envs: (runs.append(len(envs)), real(self, s, envs))[1])
    _runner(batched).process_batch(records)
    assert max(runs) >= 8  # the batch path ran, over long runs of events
    expected, got = _state(one_by_one), _state(batched)
    # a stale event stays marked as seen after a batch; a lone claim rolls back with the rest
    got["inbox"].remove(ids["stale"])
    assert got == expected
    # and what was expected is what the story means
    notes = got["notifications"]
    alerts = [row for row in notes if row[4] == "repeated_refusals"]
    assert [(row[2], row[5]) for row in alerts] == [(AGENCY, ids["refused"])]
    about_erased = [row for row in notes if row[5] == ids["erased"]]
    assert sorted(row[4] for row in about_erased) == ["milestone", "offer_made",
                                                      "referral_cancelled"]
    assert {(row[7], row[8]) for row in about_erased} == {(None, None)}
    assert [row[4] for row in notes if row[5] == ids["revoked"]] == ["offer_made"]
    assert len([row for row in notes if row[5] == ids["full"] and row[2] == OFFICER]) == 3
    assert ("pending" in {row[1] for row in got["reminders"]}
            and "cancelled" in {row[1] for row in got["reminders"]})
    hooks = [row for row in got["deliveries"] if row[3] == "webhook"]
    assert 0 < len(hooks) < len([r for r in got["notifications"] if r[2] == ORG])


def test_redelivering_a_whole_batch_adds_nothing(make_db: Callable[[], Database]) -> None:
    db = make_db()
    _recipients(db)
    records = _records(_story()[0])
    runner = _runner(db)
    runner.process_batch(records)
    before = _state(db)
    runner.process_batch(records)
    assert _state(db) == before


def test_batched_claims_match_claims_one_at_a_time(make_db: Callable[[], Database]) -> None:
    db = make_db()
    s, t = str(uuid.uuid4()), str(uuid.uuid4())

    def erased(subject: str, sequence: int, source: str = "referral-intake"
               ) -> events.Envelope:
        return envelope(events.REFERRAL_ERASED, {"referral_id": subject,
                                                 "occurred_at": "2026-03-03T00:00:00Z"},
                        sequence, source=source)

    known = erased(s, 1)
    envs = [known, erased(s, 3), erased(s, 2), erased(t, 5), erased(t, 6), erased(s, 4),
            erased(s, 4, source="other-source"), erased(t, 6)]
    envs.insert(3, envs[1])  # the same event twice in one batch
    with db.transaction() as session:
        for name in ("one", "many"):
            assert inbox.claim(session, name, known)
    with db.transaction() as session:
        one = [inbox.claim(session, "one", env) for env in envs]
        many = inbox.claim_many(session, "many", envs)
    assert one == [False, True, False, False, True, True, True, True, False]
    assert many == one
    rows = metadata.tables["aggregate_sequence"]
    with db.engine.connect() as conn:
        last = {(r.consumer, r.source, r.subject): r.last_sequence
                for r in conn.execute(select(rows))}
    for source, subject in (("referral-intake", s), ("referral-intake", t),
                            ("other-source", s)):
        assert last[("many", source, subject)] == last[("one", source, subject)]


def test_batched_claims_of_distinct_aggregates_match_claims_one_at_a_time(
        make_db: Callable[[], Database]) -> None:
    """The usual poll, no two events of one aggregate: on PostgreSQL claimed by one
    statement (``claim``'s own), with the same verdicts and sequences."""
    db = make_db()
    a, b, c, d, e = (str(uuid.uuid4()) for _ in range(5))

    def erased(subject: str, sequence: int, source: str = "referral-intake"
               ) -> events.Envelope:
        return envelope(events.REFERRAL_ERASED, {"referral_id": subject,
                                                 "occurred_at": "2026-03-03T00:00:00Z"},
                        sequence, source=source)

    seen, later = erased(a, 2), erased(e, 2)
    with db.transaction() as session:
        for name in ("one", "many"):
            assert [inbox.claim(session, name, env) for env in (seen, erased(b, 3), later)
                    ] == [True, True, True]
    new = erased(c, 1)
    envs = [seen, erased(b, 3), new, new, erased(d, 5, source="other-source"), erased(e, 4)]
    statements: list[str] = []
    with db.transaction() as session:
        one = [inbox.claim(session, "one", env) for env in envs]
        event.listen(db.engine, "before_cursor_execute",
                     lambda _c, _cur, sql, *_: statements.append(sql))
        many = inbox.claim_many(session, "many", envs)
    assert one == [False, False, True, False, True, True]
    assert many == one
    assert len(statements) == (1 if db.engine.dialect.name == "postgresql" else 3)
    rows = metadata.tables["aggregate_sequence"]
    with db.engine.connect() as conn:
        last: dict[str, dict[tuple[str, str], int]] = {"one": {}, "many": {}}
        for r in conn.execute(select(rows)):
            last[r.consumer][(r.source, r.subject)] = r.last_sequence
    assert last["many"] == last["one"]
    assert last["one"][("referral-intake", e)] == 4


def test_a_batch_of_offers_takes_a_few_statements_not_a_few_per_event(
        make_db: Callable[[], Database]) -> None:
    db = make_db()
    _recipients(db)
    envs = [envelope(STATUS, status_changed(to_status="offered", offer_=offer()))
            for _ in range(100)]
    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute",
                 lambda _c, _cur, sql, *_: statements.append(sql))
    _runner(db).process_batch(_records(envs))
    writes = [sql for sql in statements if not sql.lstrip().upper().startswith("BEGIN")]
    with db.engine.connect() as conn:
        stored = {r.event_id: (r.title, r.body, r.link) for r in conn.execute(select(
            notifications.c.event_id, notifications.c.title, notifications.c.body,
            notifications.c.link))}
        hooks = conn.execute(select(deliveries.c.channel)).scalars().all()
    assert stored == {env.id: (d.title, d.body, d.link) for env in envs  # text intact ("—")
                      for d in domain.notifications_for(env.type, env.data)}
    assert sorted(set(hooks)) == ["email", "webhook"] and len(hooks) == 200
    # inbox 3, reminders, look-up, notifications, deliveries; on PostgreSQL the inbox's
    # first two are one statement, the reminders go with the look-up and the deliveries
    # with the notifications
    assert len(writes) <= (4 if db.engine.dialect.name == "postgresql" else 7), writes


def test_storing_an_event_again_writes_deliveries_only_for_its_new_notifications(
        make_db: Callable[[], Database]) -> None:
    db = make_db()
    _recipients(db)
    env = envelope(STATUS, status_changed(to_status="offered", offer_=offer()))
    (to_org,) = domain.notifications_for(env.type, env.data)
    to_officer = domain.Draft(**{**vars(to_org), "recipient_kind": "user",
                                 "recipient_id": OFFICER})
    with db.transaction() as session:
        assert handlers.store(session, env.id, [to_org]) == 1
    with db.transaction() as session:
        assert handlers.store(session, env.id, [to_org, to_officer]) == 1
    with db.transaction() as session:
        assert handlers.store(session, env.id, [to_officer, to_org]) == 0
    sent = _state(db)["deliveries"]
    assert sorted((row[2], row[3]) for row in sent) == [
        (OFFICER, "email"), (ORG, "email"), (ORG, "webhook")]
