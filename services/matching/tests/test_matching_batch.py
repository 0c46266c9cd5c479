"""A run of submissions in one consumer batch (``SubmittedHandler.handle_many``) leaves what
handling them one at a time leaves: same decisions, reasons, events and load."""
from __future__ import annotations

from typing import Any

import pytest
from matching_factories import referral_submitted, service_upserted
from sqlalchemy import select
from test_matching_handlers import load, policy_for, routing_events, upsert

from matching import handlers, tables
from matching.decide import Policy
from matching.index import DirectoryIndex
from servicekit import events
from servicekit.db import Database

pytestmark = pytest.mark.integration


def _directory(db: Database) -> None:
    """Capacities small enough that the run's own reservations change later decisions."""
    upsert(db, service_upserted("svc-one", km_north=0.5, capacity=1),
           service_upserted("svc-two", km_north=1.0, capacity=2),
           service_upserted("svc-youth", km_north=0.2, age_max=17),
           service_upserted("svc-food", km_north=0.2, categories=["food"], capacity=1))


def _submissions() -> list[events.Envelope]:
    envs = [referral_submitted(f"00000000-0000-4000-8000-00000000000{i}", age=34,
                               need="food" if i % 3 == 0 else "housing") for i in range(7)]
    return [*envs[:4], envs[1], *envs[4:]]  # the second one redelivered mid-run


def _outcome(db: Database) -> Any:
    with db.engine.connect() as conn:
        rows = sorted((r.referral_id, r.attempt, r.outcome, r.service_id, r.score,
                       tuple(sorted(r.eliminated.items())), tuple(str(x) for x in r.reasons),
                       r.candidates) for r in conn.execute(select(tables.decisions)))
        views = sorted((r.referral_id, r.status, r.attempt) for r in conn.execute(
            select(tables.referral_view)))
    emitted = sorted((e.subject, e.type, e.sequence, tuple(sorted(
        (k, str(v)) for k, v in e.data.items() if k not in ("proposed_at", "occurred_at"))))
        for e in routing_events(db))
    loads = [load(db, s) for s in ("svc-one", "svc-two", "svc-youth", "svc-food")]
    assert len({r[0] for r in rows}) == len(rows) == 7
    assert len({r[3] for r in rows if r[3]}) >= 2
    return rows, views, emitted, loads


def test_a_run_of_submissions_decides_as_one_at_a_time_would(
        matching_db: Database, tmp_path: Any) -> None:
    from matching import bootstrap
    from servicekit.db import run_migrations

    _directory(matching_db)
    handler = handlers.SubmittedHandler(policy_for(matching_db))
    with matching_db.transaction() as session:
        handler.handle_many(session, _submissions())
    batched = _outcome(matching_db)

    other = Database(f"sqlite:///{tmp_path / 'one-by-one.db'}", tables.metadata)
    run_migrations(other.url, bootstrap.MIGRATIONS)
    alone = handlers.SubmittedHandler(Policy(index=DirectoryIndex()))
    try:
        _directory(other)
        for env in _submissions():
            with other.transaction() as session:
                alone(session, env)
        one_by_one = _outcome(other)
    finally:
        other.dispose()
    assert batched == one_by_one
    assert batched[3] == [(1, 0), (2, 0), (0, 0), (1, 0)]  # full, full, too old, full


def test_a_run_whose_chosen_place_was_taken_meanwhile_is_rolled_back_not_overfilled(
        matching_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's places are reserved together under the conditional UPDATE's guard: when
    another worker filled a chosen service after the run's decision, nothing is taken and
    the run fails (the runner then handles its events one at a time)."""
    from sqlalchemy import update

    from matching import decide

    _directory(matching_db)
    real = decide.Held.reserve

    def filled_meanwhile(self: decide.Held, session: Any) -> None:
        assert "svc-one" in self.places
        session.execute(update(tables.service_load)
                        .where(tables.service_load.c.service_id == "svc-one")
                        .values(open_offers=1))  # as another worker's committed offer
        real(self, session)

    monkeypatch.setattr(decide.Held, "reserve", filled_meanwhile)
    handler = handlers.SubmittedHandler(policy_for(matching_db))
    with pytest.raises(decide.HeldPlaceTaken):
        with matching_db.transaction() as session:
            handler.handle_many(session, _submissions()[:3])
    assert load(matching_db, "svc-one") == (0, 0)  # rolled back: nothing taken, nothing over
    assert load(matching_db, "svc-two") == (0, 0)
