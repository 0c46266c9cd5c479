"""The submission's short path (handlers.submit_referral): one combined statement on
PostgreSQL, one by one on SQLite; the event's data built in the contract's own form and
skipping its second validation; the answer built without the response schema's dump; the
Idempotency-Key row written inside the submission's statement."""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from intake_testkit import Intake, referral_body
from psycopg import _queries as psycopg_queries
from sqlalchemy import text
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError

from referral_intake import api, audit, bootstrap, handlers, sql, views
from servicekit import events, geo, idempotency, outbox
from servicekit.db import run_migrations
from servicekit.settings import Settings

BODIES: list[dict[str, Any]] = [
    referral_body(),
    referral_body(subject={"given_name": "A", "age": 0}, notes=None, flags=["veteran"]),
    referral_body(subject={"given_name": "A", "age": 120, "gender": "x" * 40,
                           "preferred_language": "pt-BR", "needs_interpreter": True},
                  flags=["youth", "family", "youth"], need="food", urgency="emergency"),
    referral_body(subject={"given_name": "A", "birth_date": "2010-02-28",
                           "needs_interpreter": False},
                  consent={"share_with_provider": False, "referrer_updates": "none",
                           "contact_methods": [], "obtained_via": "written",
                           "expires_at": "2031-01-01T10:00:00+02:00"}),
    referral_body(location={"lat": -89.99, "lon": 179.99},
                  consent={"share_with_provider": True, "referrer_updates": "milestones",
                           "contact_methods": ["sms", "phone", "email", "in_person"],
                           "obtained_via": "electronic"}),
]


def _without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key and v is not None}


@pytest.mark.parametrize("body", [_without(b, "notes") if b.get("notes") is None else b
                                  for b in BODIES])
def test_the_submitted_event_is_exactly_its_validated_form(intake: Intake,
                                                           body: dict[str, Any]) -> None:
    resp = intake.client.post("/v1/referrals", json=body, headers=intake.officer())
    assert resp.status_code == 201, resp.get_json()
    with intake.db.engine.connect() as c:
        payload = c.execute(text("SELECT payload FROM outbox")).scalar_one()
    sent = json.loads(bytes(payload))
    # decode() validates in full (load + dump): the data on the wire is already that form,
    # field order included
    assert sent["data"] == events.decode(bytes(payload)).data
    assert list(sent["data"]) == list(events.decode(bytes(payload)).data)
    assert list(sent["data"]["eligibility"]) == list(
        events.ReferralSubmittedV2().fields["eligibility"].schema.fields)
    assert sent["sequence"] == 1 and sent["subject"] == resp.get_json()["id"]


def test_submitted_data_equals_what_full_validation_makes() -> None:
    now = datetime.now(UTC)
    rid = str(uuid.uuid4())
    row = {"id": rid, "short_id": "R-7F3KQ2", "need": "legal", "urgency": "routine",
           "agency_id": "pd", "officer_ref": "f" * 64}
    for eligibility in ({"age": 7, "gender": None, "preferred_language": None,
                         "needs_interpreter": False, "flags": []},
                        {"age": 40, "gender": "w", "preferred_language": "en",
                         "needs_interpreter": True, "flags": ["disability", "veteran"]}):
        consent = {"share_with_provider": True, "referrer_updates": "full",
                   "contact_methods": ["phone", "email", "phone"], "obtained_via": "verbal"}
        data = handlers.submitted_data(row, dict(geo.coarsen(47.6101, -122.3301)),
                                       eligibility, consent, now)
        trusted = events.new_event(events.REFERRAL_SUBMITTED, subject=rid, sequence=1,
                                   data=data, source="t", trusted=True).data
        checked = events.new_event(events.REFERRAL_SUBMITTED, subject=rid, sequence=1,
                                   data=data, source="t").data
        assert trusted == checked and list(trusted) == list(checked)


@pytest.mark.parametrize(("subject", "field"), [
    ({"given_name": "A", "age": 30, "gender": ""}, "gender"),
    ({"given_name": "A", "age": 30, "preferred_language": "en\n"}, "preferred_language"),
])
def test_values_the_event_contract_refuses_are_refused_at_the_boundary(
        intake: Intake, subject: dict[str, Any], field: str) -> None:
    """Before, these passed the request schema and failed the event's (a 500)."""
    resp = intake.client.post("/v1/referrals", json=referral_body(subject=subject),
                              headers=intake.officer())
    assert resp.status_code == 422
    assert field in resp.get_json()["errors"]["subject"]
    assert intake.sql("SELECT count(*) FROM referrals")[0][0] == 0


def test_only_request_built_event_data_skips_the_second_validation(
        intake: Intake, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    real = events.new_event

    def spy(*args: Any, **kwargs: Any) -> events.Envelope:
        if args[0] == events.REFERRAL_SUBMITTED:
            seen.append(kwargs.get("trusted", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(events, "new_event", spy)
    first = intake.submit()["id"]
    again = intake.client.post("/v1/referrals", headers=intake.officer(), json={
        "need": "food", "urgency": "routine", "same_subject_as": first,
        "consent": referral_body()["consent"]})
    assert again.status_code == 201
    # an agency id longer than the contract allows is not the request's to vouch for
    long_agency = intake.officer(agency="a" * 201)
    refused = intake.client.post("/v1/referrals", json=referral_body(), headers=long_agency)
    assert refused.status_code == 500  # as before: the contract refuses the event
    assert seen == [True, False, False]
    assert intake.sql("SELECT count(*) FROM referrals")[0][0] == 2


def test_the_answer_is_what_the_response_schema_would_make() -> None:
    now = datetime.now(UTC)
    for updates in ("none", "milestones", "full"):
        consent = {"share_with_provider": updates != "none", "referrer_updates": updates,
                   "contact_methods": ["sms", "phone", "sms"], "obtained_via": "verbal",
                   "expires_at": now + timedelta(days=3)}
        view = views.submitted_view({"id": str(uuid.uuid4()), "short_id": "R-ABCDEF",
                                     "need": "food", "urgency": "urgent"}, consent, now)
        fast, full = api._submitted_answer(view), api._without_pii(view)
        assert json.dumps(fast) == json.dumps(full)


def test_the_outbox_row_is_the_one_the_kit_writes(intake: Intake) -> None:
    rid = str(uuid.uuid4())
    env = events.new_event(events.REFERRAL_ERASED, subject=rid, sequence=1, source="t",
                           data={"referral_id": rid, "occurred_at": datetime.now(UTC)})
    with intake.db.transaction() as session:
        outbox.add(session, env)
    kit = intake.sql("SELECT event_id, topic, key, event_type, payload, headers, sent_at, "
                     "attempts, last_error FROM outbox")[0]
    mine = outbox.row_for(env)
    assert (mine["event_id"], mine["topic"], mine["key"], mine["event_type"],
            mine["payload"], mine["headers"]) == tuple(kit[:4]) + (bytes(kit[4]), kit[5])
    assert tuple(kit[6:]) == (None, 0, None)  # left to the table's defaults in both


@pytest.mark.parametrize("variant", [(s, k) for s in (True, False) for k in (True, False)])
def test_the_combined_statement_stays_in_psycopgs_query_cache(variant: tuple[bool, bool]
                                                              ) -> None:
    """psycopg re-parses (~0.6 ms) every query with more than MAX_CACHED_STATEMENT_PARAMS
    parameters or longer than MAX_CACHED_STATEMENT_LENGTH."""
    compiled = sql.combined(handlers._SUBMIT[variant]).compile(
        dialect=postgresql.psycopg.dialect())
    assert len(compiled.params) <= psycopg_queries.MAX_CACHED_STATEMENT_PARAMS
    assert len(str(compiled)) <= psycopg_queries.MAX_CACHED_STATEMENT_LENGTH


def test_a_submission_on_sqlite_writes_the_same_rows(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """Embedded mode: the same prebuilt statements, sent one by one."""
    settings = make_settings("referral-intake",
                             INTAKE_DATABASE_URL=f"sqlite:///{tmp_path / 'intake.db'}")
    run_migrations(settings.database_url, bootstrap.MIGRATIONS)
    intake = Intake(settings)
    try:
        h = {**intake.officer(), "Idempotency-Key": "k-1"}
        first = intake.client.post("/v1/referrals", json=referral_body(), headers=h)
        assert first.status_code == 201
        again = intake.client.post("/v1/referrals", json=referral_body(), headers=h)
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.get_json() == first.get_json()
        rid = first.get_json()["id"]
        other = intake.client.post("/v1/referrals", headers=intake.officer(), json={
            "need": "food", "urgency": "routine", "same_subject_as": rid,
            "consent": referral_body()["consent"]})
        assert other.status_code == 201
        for table, rows in (("subjects", 1), ("referrals", 2), ("consents", 2),
                            ("timeline", 2), ("event_sequence", 2), ("outbox", 2),
                            ("audit_log", 2), ("idempotency_key", 1)):
            assert intake.sql(f"SELECT count(*) FROM {table}")[0][0] == rows, table
        assert [e.sequence for e in intake.events(events.REFERRAL_SUBMITTED)] == [1, 1]
        shown = intake.client.get(f"/v1/referrals/{rid}", headers=intake.supervisor())
        assert shown.status_code == 200 and shown.get_json()["need"] == "housing"
        with intake.db.transaction() as session:
            assert audit.verify(session, intake.ctx.audit_key).ok
    finally:
        intake.db.dispose()


def test_a_key_written_inside_the_work_still_replays_a_concurrent_winner(
        intake: Intake) -> None:
    """writes_key=True with check_first: the key's INSERT fails inside ``work`` when another
    request committed the key first; the loser replays the winner's answer."""
    principal, key = "officer:x", "race-2"
    table = intake.db.metadata.tables["idempotency_key"]
    release = threading.Event()

    def winner_work(session: Any, answer: idempotency.Answer) -> None:
        row = answer(201, {"id": "winner"}, "winner")
        session.execute(table.insert().values(**row))
        release.wait(5)

    def loser_work(session: Any, answer: idempotency.Answer) -> None:
        row = answer(201, {"id": "loser"}, "loser")
        release.set()  # the winner commits while this INSERT waits on its key
        session.execute(table.insert().values(**row))

    results: dict[str, Any] = {}

    def run(name: str, work: Any) -> None:
        with intake.app.test_request_context():
            results[name] = idempotency.run(intake.db, principal=principal, key=key,
                                            payload={"a": 1}, work=work, writes_key=True)

    winner = threading.Thread(target=run, args=("winner", winner_work))
    winner.start()
    deadline = time.monotonic() + 10
    while not intake.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                         "current_database() AND state = 'idle in transaction'")[0][0]:
        assert time.monotonic() < deadline, "the winner never wrote its key"
        time.sleep(0.01)  # until the winner's INSERT is in (it then waits on ``release``)
    run("loser", loser_work)
    winner.join()
    assert results["winner"].get_json() == {"id": "winner"}
    assert results["loser"].get_json() == {"id": "winner"}
    assert results["loser"].headers["Idempotent-Replayed"] == "true"


def test_a_work_that_never_answers_is_a_bug(intake: Intake) -> None:
    with intake.app.test_request_context(), pytest.raises(RuntimeError, match="answer"):
        idempotency.run(intake.db, principal="p", key="k", payload={}, writes_key=True,
                        work=lambda session, answer: None)
    assert intake.sql("SELECT count(*) FROM idempotency_key")[0][0] == 0


def test_a_failing_combined_statement_leaves_nothing(intake: Intake,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The sequence row of a new referral is a plain INSERT: had it existed, the whole
    submission (referral, outbox, audit entry, key) rolls back."""
    fixed = uuid.UUID("00000000-0000-4000-8000-000000000001")
    intake.sql("INSERT INTO event_sequence (subject, last_sequence) VALUES (:s, 7)",
               s=str(fixed))
    monkeypatch.setattr(handlers.uuid, "uuid4", lambda: fixed)
    with pytest.raises(IntegrityError), intake.db.transaction() as session:
        handlers.submit_referral(session, intake.ctx, _officer(), {
            **referral_body(), "subject": {"given_name": "A", "age": 3}})
    for table in ("referrals", "subjects", "outbox", "audit_log"):
        assert intake.sql(f"SELECT count(*) FROM {table}")[0][0] == 0, table
    assert intake.sql("SELECT sum(seq) FROM audit_head")[0][0] == 0


def _officer() -> Any:
    from servicekit.auth import Principal

    return Principal(sub="officer-a", role="officer", agency="pd")


def test_a_short_id_clash_draws_another_id(intake: Intake, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    """Short ids are 30 random bits, so two referrals may draw the same one: the submission
    is then made again under new ids instead of answering 500."""
    first = intake.submit()
    drawn: list[str] = []
    real = handlers.domain.short_id

    def clashing_once(rid: str) -> str:
        drawn.append(rid)
        return first["short_id"] if len(drawn) == 1 else real(rid)

    monkeypatch.setattr(handlers.domain, "short_id", clashing_once)
    second = intake.submit(headers=dict(intake.officer(), **{"Idempotency-Key": "k-clash"}))
    assert len(drawn) == 2 and second["id"] == drawn[1] != drawn[0]
    assert second["short_id"] != first["short_id"]
    assert intake.sql("SELECT count(*) FROM referrals")[0][0] == 2
    assert len(intake.events(events.REFERRAL_SUBMITTED)) == 2
    assert intake.client.post("/v1/referrals", json=referral_body(), headers=dict(
        intake.officer(), **{"Idempotency-Key": "k-clash"})).get_json()["id"] == second["id"]


def test_short_ids_use_random_bits_of_the_uuid() -> None:
    """The version digit of a uuid4 is fixed: 10^5 referrals share about 5 short ids of 30
    random bits (more than 25 is below one in 10^9), where 26 bits gave about 75."""
    ids = {handlers.domain.short_id(str(uuid.uuid4())) for _ in range(100_000)}
    assert len(ids) >= 100_000 - 25


def test_statements_sent_straight_to_the_cursor_behave_like_execute(intake: Intake) -> None:
    """``sql.run`` (PostgreSQL, in a transaction): the rows ``execute`` gives, driver errors
    wrapped by SQLAlchemy (so idempotency and 503 handling see them) with parameters
    hidden, and statements it does not cover sent through ``execute``."""
    append = sql.combined([audit.APPEND, audit.ADVANCE])
    row = {"chain": 3, "seq": 1, "occurred_at": "2026-01-01T00:00:00.000Z",
           "actor": "secret-actor-7", "role": "officer", "action": "write", "purpose": "intake",
           "referral_id": None, "subject_id": None, "fields": ["phone"], "outcome": "ok",
           "prev_hash": audit.GENESIS, "hash": "f" * 64}
    with intake.db.transaction() as session:
        conn = session.connection()
        assert sql._direct(conn, audit._HEAD_LOCKED) is not None
        assert sql._direct(conn, append) is not None
        assert audit.lock_head(conn, 3) == tuple(conn.execute(audit._HEAD, {"chain": 3}).one())
        assert sql.run(conn, append, sql.bound(audit.PREFIX, row)) is None
        assert audit.lock_head(conn, 3) == (1, "f" * 64)
        with pytest.raises(IntegrityError) as raised:  # the same entry again
            sql.run(conn, append, sql.bound(audit.PREFIX, row))
        assert "secret-actor-7" not in str(raised.value)
        session.rollback()
    with intake.db.transaction() as session:
        conn = session.connection()
        returning = audit.ADVANCE.returning(audit.audit_head.c.seq)
        assert sql._direct(conn, returning) is None  # not covered: execute
        assert sql.run(conn, returning, {"a_chain": 3, "a_seq": 0, "a_hash": audit.GENESIS}) \
            == [(0,)]
        session.rollback()
