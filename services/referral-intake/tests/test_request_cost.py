"""Per-request database cost of the hot paths, counted (not timed, so machine load cannot
make these flaky): a regression that adds a statement per referral fails here."""
from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from intake_testkit import Intake, referral_body
from sqlalchemy import event

from referral_intake import audit


@contextmanager
def counted(intake: Intake) -> Iterator[dict[str, int]]:
    counts = {"statements": 0, "commits": 0}

    def stmt(*_: Any, **__: Any) -> None:
        counts["statements"] += 1

    def commit(*_: Any) -> None:
        counts["commits"] += 1

    event.listen(intake.db.engine, "before_cursor_execute", stmt)
    event.listen(intake.db.engine, "commit", commit)
    try:
        yield counts
    finally:
        event.remove(intake.db.engine, "before_cursor_execute", stmt)
        event.remove(intake.db.engine, "commit", commit)


def _count(intake: Intake, table: str) -> int:
    return int(intake.sql(f"SELECT count(*) FROM {table}")[0][0])


def test_submit_is_two_statements_and_one_commit(intake: Intake) -> None:
    intake.submit()  # warm caches
    with counted(intake) as counts:
        for _ in range(3):
            resp = intake.client.post("/v1/referrals", json=referral_body(), headers={
                **intake.officer(), "Idempotency-Key": uuid.uuid4().hex})
            assert resp.status_code == 201
    # audit head lock (1); rows of subject, referral, consent, timeline, event sequence,
    # outbox, audit entry, audit head and Idempotency-Key (1)
    assert counts == {"statements": 2 * 3, "commits": 3}
    # and every one of those rows was written (the warm-up had no Idempotency-Key)
    for table in ("subjects", "referrals", "consents", "timeline", "event_sequence", "outbox",
                  "audit_log"):
        assert _count(intake, table) == 4, table
    assert _count(intake, "idempotency_key") == 3
    assert intake.sql("SELECT sum(seq) FROM audit_head")[0][0] == 4
    with intake.db.transaction() as session:
        assert audit.verify(session, intake.ctx.audit_key).ok


def test_a_replayed_submit_leaves_no_trace_of_its_second_run(intake: Intake) -> None:
    h = {**intake.officer(), "Idempotency-Key": "same-key-1"}
    first = intake.client.post("/v1/referrals", json=referral_body(), headers=h)
    tables = ("subjects", "referrals", "consents", "timeline", "outbox", "audit_log",
              "idempotency_key")
    before = {t: _count(intake, t) for t in tables}
    again = intake.client.post("/v1/referrals", json=referral_body(), headers=h)
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert {t: _count(intake, t) for t in tables} == before
    other = intake.client.post("/v1/referrals", json=referral_body(urgency="routine"), headers=h)
    assert other.status_code == 422
    assert {t: _count(intake, t) for t in tables} == before
    with intake.db.transaction() as session:
        assert audit.verify(session, intake.ctx.audit_key).ok


def test_concurrent_duplicates_create_one_referral(intake: Intake) -> None:
    h = {**intake.officer(), "Idempotency-Key": "race-1"}
    answers: list[Any] = []

    def post() -> None:
        client = intake.app.test_client()
        resp = client.post("/v1/referrals", json=referral_body(), headers=h)
        answers.append((resp.status_code, resp.get_json()["id"]))

    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {code for code, _ in answers} == {201} and len({rid for _, rid in answers}) == 1
    assert _count(intake, "referrals") == 1 and _count(intake, "outbox") == 1
