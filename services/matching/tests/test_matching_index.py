"""The worker's in-memory directory index (``matching.index``): the same candidates and
counts as the database's spatial index, and current with whatever other workers commit,
in whatever order their transactions commit, never holding an uncommitted change."""
from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from matching_factories import HOME, referral_submitted, service_removed, service_upserted
from sqlalchemy import select, text
from test_matching_handlers import apply, load, routing_events, upsert

from matching import directory, handlers, index, tables
from matching.decide import DEFAULT_POLICY, Policy
from matching.index import DirectoryIndex
from servicekit import events, geo
from servicekit.db import Database
from servicekit.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(params=["postgresql", "sqlite"])
def any_db(request: pytest.FixtureRequest, matching_settings: Settings,
           tmp_path: Any) -> Any:
    """A fresh database; handlers given no policy decide from the database's index (the
    indexes under test here are the tests' own)."""
    from matching import bootstrap
    from servicekit.db import run_migrations

    url = matching_settings.database_url
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'matching.db'}"
        run_migrations(url, bootstrap.MIGRATIONS)
    db = Database(url, tables.metadata)
    yield db
    db.dispose()


def _cell(at: tuple[float, float] = HOME) -> str:
    return geo.coarsen(*at)["geohash"]


def _ids(found: list[Any]) -> list[str]:
    return [c.service_id for c in found]


def _random_service(i: int, rng: random.Random) -> events.Envelope:
    """Around HOME: radii from 0.5 to 400 km, some with two locations, some with
    service-area geohashes, some declaring no area at all."""
    kind = rng.random()
    lat, lon = HOME[0] + rng.uniform(-1.5, 1.5), HOME[1] + rng.uniform(-2.5, 2.5)
    locations = [{"location_id": f"l{i}-{k}", "lat": lat + k * rng.uniform(-0.3, 0.3),
                  "lon": lon + k * rng.uniform(-0.3, 0.3), "geohash": geo.encode(lat, lon, 9)}
                 for k in range(rng.choice([1, 1, 2]))]
    area: dict[str, Any] = {"radius_km": rng.choice([0.5, 3.0, 12.0, 40.0, 400.0]),
                            "geohashes": []}
    if kind < 0.1:
        area = {"radius_km": None, "geohashes": [geo.encode(lat, lon, rng.randint(2, 7))]}
    elif kind < 0.15:
        area = {"radius_km": None, "geohashes": []}
    elif kind < 0.2:
        area["geohashes"] = [_cell()[:rng.randint(3, 6)]]
    return service_upserted(
        f"svc-{i:03d}", categories=rng.sample(["housing", "food", "legal"], rng.randint(1, 2)),
        locations=locations, service_area=area, capacity=rng.randint(1, 3),
        status=rng.choice(["active", "active", "inactive"]),
        organization_id=f"org-{i % 7}")


def _looks_like_database(db: Database, memory: DirectoryIndex, rng: random.Random,
                         needs: list[str]) -> None:
    """One lookup of a random need at a random point near HOME: ``memory`` finds the
    candidates and counts the database's index finds."""
    where = geo.coarsen(HOME[0] + rng.uniform(-1.5, 1.5), HOME[1] + rng.uniform(-2.5, 2.5))
    need = rng.choice(needs)
    with db.transaction() as session:
        found = memory.lookup(session, need, where["geohash"], (where["lat"], where["lon"]))
        from_db, pre = directory.candidates_for(session, need, where["geohash"], None,
                                                (where["lat"], where["lon"]))
    assert found.candidates == from_db and found.pre == pre, (need, where)


def test_memory_and_database_indexes_find_the_same_candidates(any_db: Database) -> None:
    rng = random.Random(20261127)
    upsert(any_db, *(_random_service(i, rng) for i in range(150)))
    memory = DirectoryIndex()
    for k in range(60):
        _looks_like_database(any_db, memory, rng, ["housing", "food", "legal", "debt"])
        if k == 30:  # load moves: both read it from the database
            rid = apply_submit(any_db, need="food")
            assert routing_events(any_db, rid)
    assert len(memory) == 150 and memory.loads == 1


def _bucketed(memory: DirectoryIndex) -> dict[Any, list[str]]:
    """Which services each bucket of ``memory`` holds (by service id)."""
    store = memory._store
    return {key: sorted(store.records[held if held >= 0 else ~held][0]  # type: ignore[index]
                        for held in bucket)
            for key, bucket in memory._buckets.items()}


def test_memory_followed_through_changes_holds_what_a_fresh_load_holds(
        any_db: Database) -> None:
    """Services changed (moved, re-shaped: one radius and one location or not), removed and
    added by another worker, followed change by change (slots freed and taken again): the
    same candidates as the database's index, and the same services in the same buckets as
    an index loaded afresh."""
    rng = random.Random(20261205)
    upsert(any_db, *(_random_service(i, rng) for i in range(120)))
    memory = DirectoryIndex()
    with any_db.transaction() as session:
        memory.lookup(session, "food", _cell())  # loads it
    for i in rng.sample(range(120), 30):
        with any_db.transaction() as session:
            handlers.on_service_removed(session, service_removed(f"svc-{i:03d}"))
    upsert_elsewhere(any_db, *(_random_service(i, rng) for i in rng.sample(range(120), 60)),
                     *(_random_service(i, rng) for i in range(120, 140)))
    for _ in range(40):
        _looks_like_database(any_db, memory, rng, ["housing", "food", "legal"])
    fresh = DirectoryIndex()
    with any_db.transaction() as session:
        fresh.lookup(session, "food", _cell())
    assert memory.loads == 1 and len(memory) == len(fresh)
    assert _bucketed(memory) == _bucketed(fresh)


def apply_submit(db: Database, **kwargs: Any) -> str:
    env = referral_submitted(**kwargs)
    apply(db, handlers.on_referral_submitted, env)
    return env.subject


def test_changes_committed_by_another_worker_are_seen(any_db: Database) -> None:
    """Another worker (here: handlers without this index) adds, changes and removes
    services; the next lookup sees each change."""
    memory = DirectoryIndex()

    def near() -> tuple[list[str], dict[str, int]]:
        with any_db.transaction() as session:
            found = memory.lookup(session, "housing", _cell())
        return _ids(found.candidates), found.pre

    upsert_elsewhere(any_db, service_upserted("svc-a"))
    assert near() == (["svc-a"], {"category": 0, "out_of_area": 0})
    upsert_elsewhere(any_db, service_upserted("svc-b", km_north=2.0),
                     service_upserted("svc-a", km_north=300.0))  # moved away
    assert near() == (["svc-b"], {"category": 0, "out_of_area": 1})
    upsert_elsewhere(any_db, service_upserted("svc-a", categories=["food"]))
    assert near() == (["svc-b"], {"category": 1, "out_of_area": 0})
    with any_db.transaction() as session:
        handlers.on_service_removed(session, service_removed("svc-b"))
    assert near() == ([], {"category": 1, "out_of_area": 0})
    assert memory.loads == 1  # all of it followed, never reloaded


def test_more_changes_than_one_look_reads_are_all_seen(any_db: Database,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A look reads at most ``CHANGES_PER_LOOK`` changes with the load (here 2); a full
    batch means there may be more, and the rest are read too."""
    monkeypatch.setattr(index, "CHANGES_PER_LOOK", 2)
    monkeypatch.setattr(index, "_LOOK_PG", index._LOOK_PG.replace(
        "LIMIT 1000", "LIMIT 2"))
    assert "LIMIT 2" in index._LOOK_PG
    memory = DirectoryIndex()
    with any_db.transaction() as session:
        assert memory.lookup(session, "housing", _cell()).candidates == []  # loaded: empty
    upsert_elsewhere(any_db, *(service_upserted(f"svc-{i}", km_north=i / 10) for i in range(5)))
    with any_db.transaction() as session:
        found = memory.lookup(session, "housing", _cell())
    assert _ids(found.candidates) == [f"svc-{i}" for i in range(5)] and memory.loads == 1


def test_a_run_of_lookups_finds_what_each_lookup_finds_in_turn(
        any_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """``lookup_many`` (a run of submissions) gives each query what ``lookup`` gives it in
    turn in one transaction: candidates with their (differing) loads, counts, tried services
    (a referral asked twice, a query naming none), after changes another worker committed
    since the last look (services added, moved, re-categorised, removed), in one statement
    on PostgreSQL (the changes' services re-read in one more)."""
    rng = random.Random(20261205)
    upsert_elsewhere(any_db, *(_random_service(i, rng) for i in range(120)))
    now = datetime.now(UTC)
    with any_db.transaction() as session:  # another worker's offers and declines
        for i in range(0, 120, 3):
            tables.reserve(session, f"svc-{i:03d}", 3, now)
        for k in range(8):
            for i in rng.sample(range(120), 10):
                tables.mark_tried(session, f"ref-{k}", f"svc-{i:03d}", now)
    run, each = DirectoryIndex(), DirectoryIndex()
    statements = [0]
    if any_db.engine.dialect.name == "postgresql":
        real = index._cursor

        def counting(driver_connection: Any) -> Any:
            cur = real(driver_connection)
            execute = cur.execute

            def counted(*args: Any, **kwargs: Any) -> Any:
                statements[0] += 1
                return execute(*args, **kwargs)

            return SimpleNamespace(execute=counted)

        monkeypatch.setattr(index, "_cursor", counting)
    for k in range(4):
        queries: list[index.Query] = []
        for j in range(12):
            where = geo.coarsen(HOME[0] + rng.uniform(-1.5, 1.5),
                                HOME[1] + rng.uniform(-2.5, 2.5))
            queries.append((rng.choice(["housing", "food", "legal"]), where["geohash"],
                            None if j == 5 else (where["lat"], where["lon"]),
                            None if j == 7 else f"ref-{j % 10}"))  # ref-0 and -1 twice
        with any_db.transaction() as session:
            statements[0] = 0
            found = run.lookup_many(session, queries)
            looks = statements[0]
            alone = [each.lookup(session, *q) for q in queries]
        assert found == alone, k
        assert {f.tried for f in found} != {frozenset()}
        assert len({c.load for f in found for c in f.candidates}) > 1
        if any_db.engine.dialect.name == "postgresql":
            assert looks == 1
        # another worker changes the directory before the next run
        upsert_elsewhere(any_db, *(_random_service(i, rng) for i in range(130 + k * 10,
                                                                           140 + k * 10)),
                         *(_random_service(i, rng) for i in rng.sample(range(120), 15)))
        with any_db.transaction() as session:
            for i in rng.sample(range(120), 3):
                handlers.on_service_removed(session, service_removed(f"svc-{i:03d}"))
    assert run.loads == each.loads == 1


def upsert_elsewhere(db: Database, *envs: events.Envelope) -> None:
    for env in envs:
        with db.transaction() as session:
            handlers.on_service_upserted(session, env, DEFAULT_POLICY)


def test_a_transaction_sees_its_own_changes_and_nobody_else_before_it_commits(
        any_db: Database) -> None:
    mine, theirs = Policy(index=DirectoryIndex()), DirectoryIndex()
    upsert_elsewhere(any_db, service_upserted("svc-old", capacity=2))
    with any_db.transaction() as session:  # both loaded before the change
        theirs.lookup(session, "housing", _cell())
        mine.index.lookup(session, "housing", _cell())  # type: ignore[union-attr]
    session = any_db.session_factory()
    try:
        handlers.on_service_upserted(session, service_upserted("svc-new"), mine)
        handlers.on_service_upserted(session, service_upserted("svc-old", capacity=2,
                                                               age_max=17), mine)
        handlers.on_service_removed(session, service_removed("svc-new"), mine)
        handlers.on_service_upserted(session, service_upserted("svc-new"), mine)
        found = mine.index.lookup(session, "housing", _cell())  # type: ignore[union-attr]
        assert _ids(found.candidates) == ["svc-new", "svc-old"]
        assert found.candidates[1].age_max == 17
        if any_db.is_sqlite:  # one writer at a time: nobody reads meanwhile
            session.commit()
        else:
            with any_db.transaction() as other:
                seen = theirs.lookup(other, "housing", _cell()).candidates
            assert _ids(seen) == ["svc-old"] and seen[0].age_max is None
            session.commit()
    finally:
        session.close()
    with any_db.transaction() as other:
        seen = theirs.lookup(other, "housing", _cell()).candidates
        again = mine.index.lookup(other, "housing", _cell()).candidates  # type: ignore[union-attr]
    assert _ids(seen) == _ids(again) == ["svc-new", "svc-old"]
    assert seen[1].age_max == again[1].age_max == 17


def test_a_rolled_back_change_never_reaches_memory(any_db: Database) -> None:
    policy = Policy(index=DirectoryIndex())
    upsert_elsewhere(any_db, service_upserted("svc-keep", capacity=3))
    with any_db.transaction() as session:
        policy.index.lookup(session, "housing", _cell())  # type: ignore[union-attr]
    session = any_db.session_factory()
    try:
        handlers.on_service_upserted(session, service_upserted("svc-ghost"), policy)
        handlers.on_service_upserted(session, service_upserted("svc-keep", capacity=3,
                                                               status="inactive"), policy)
        found = policy.index.lookup(session, "housing", _cell())  # type: ignore[union-attr]
        assert _ids(found.candidates) == ["svc-ghost", "svc-keep"]
        assert found.candidates[1].status == "inactive"
        session.rollback()  # e.g. a consumer batch that failed
    finally:
        session.close()
    with any_db.transaction() as session:
        found = policy.index.lookup(session, "housing", _cell())  # type: ignore[union-attr]
    assert _ids(found.candidates) == ["svc-keep"] and found.candidates[0].status == "active"
    assert found.pre == {"category": 0, "out_of_area": 0}


def test_an_older_transaction_committing_last_is_not_missed(
        matching_settings: Settings) -> None:
    """PostgreSQL: the change of a transaction that began (took its id) first but commits
    after a newer one is still found (by the snapshot's in-progress ids, not by 'newer
    than the newest change seen')."""
    db = Database(matching_settings.database_url, tables.metadata)
    memory = DirectoryIndex()
    try:
        upsert_elsewhere(db, service_upserted("svc-older", km_north=300.0))
        with db.transaction() as session:
            assert memory.lookup(session, "housing", _cell()).candidates == []
        older = db.session_factory()  # moves a known service near (no count changes, so
        # no row lock the newer transaction waits for); takes its transaction id first
        handlers.on_service_upserted(older, service_upserted("svc-older"))
        upsert_elsewhere(db, service_upserted("svc-newer", km_north=2.0))  # commits first
        with db.transaction() as session:
            assert _ids(memory.lookup(session, "housing", _cell()).candidates) == [
                "svc-newer"]
        older.commit()
        older.close()
        with db.transaction() as session:
            assert _ids(memory.lookup(session, "housing", _cell()).candidates) == [
                "svc-newer", "svc-older"]
    finally:
        db.dispose()


def test_decisions_read_load_and_tried_services_from_the_database(
        any_db: Database) -> None:
    """What moves all the time is never taken from memory: another worker's reservation
    fills a service, and a tried service is never proposed again."""
    upsert(any_db, service_upserted("svc-one", capacity=1),
           service_upserted("svc-two", km_north=3.0, capacity=1))
    memory = DirectoryIndex()
    with any_db.transaction() as session:
        assert memory.lookup(session, "housing", _cell()).candidates[0].open_offers == 0
    with any_db.transaction() as session:  # another worker takes svc-one's place
        assert tables.reserve(session, "svc-one", 1, datetime.now(UTC))
        tables.mark_tried(session, "ref-1", "svc-two", datetime.now(UTC))
    with any_db.transaction() as session:
        found = memory.lookup(session, "housing", _cell(), referral_id="ref-1")
    assert [(c.service_id, c.load) for c in found.candidates] == [("svc-one", 1),
                                                                  ("svc-two", 0)]
    assert found.tried == {"svc-two"}
    assert load(any_db, "svc-one") == (1, 0)


def test_any_service_id_has_its_load_read(any_db: Database) -> None:
    """Service ids are any text: the per-decision statement sends them as one array literal
    (every element quoted, quotes and backslashes escaped), so each is read as itself."""
    odd = ['svc "quoted"', "svc\\back\\", "svc,comma", "{svc}", " svc ", "NULL", "svc-\u00e9",
           '"', "\\"]
    upsert(any_db, *(service_upserted(sid, km_north=i / 10, capacity=2)
                     for i, sid in enumerate(odd)))
    with any_db.transaction() as session:  # another worker takes a place at each
        for sid in odd:
            assert tables.reserve(session, sid, 2, datetime.now(UTC))
    memory = DirectoryIndex()
    with any_db.transaction() as session:
        found = memory.lookup(session, "housing", _cell())
    assert sorted((c.service_id, c.open_offers) for c in found.candidates) == sorted(
        (sid, 1) for sid in odd)
    if any_db.engine.dialect.name == "postgresql":  # each alone too, as PostgreSQL reads it
        with any_db.engine.connect() as conn:
            for items in ([], *([sid] for sid in odd), odd, ["a", 'b"', "c"]):
                assert conn.execute(text("SELECT unnest(CAST(:a AS text[]))"), {
                    "a": index.text_array(items)}).scalars().all() == items


def test_the_worker_policy_decides_from_memory(matching_settings: Settings) -> None:
    from matching import bootstrap

    policy = bootstrap.policy_from(matching_settings, in_memory=True)
    assert isinstance(policy.index, DirectoryIndex)
    assert bootstrap.policy_from(matching_settings).index is None  # the api's: no copy


def test_fast_parsing_builds_the_same_candidate_as_the_rows_do(any_db: Database) -> None:
    env = service_upserted("svc-p", languages=["en", "so"], genders=["female"],
                           populations=["veteran"], age_min=18, age_max=64,
                           schedule={"always_open": False, "timezone": "Europe/London",
                                     "hours": [{"byday": "MO", "opens_at": "09:00",
                                                "closes_at": "17:00"}],
                                     "valid_from": "2026-01-01", "valid_to": None},
                           service_area={"radius_km": 5.0, "geohashes": ["gcpv"]})
    upsert(any_db, env)
    memory = DirectoryIndex()
    with any_db.transaction() as session:
        [fast] = memory.lookup(session, "housing", _cell()).candidates
        [slow] = directory.every_service(session)
    assert fast == slow  # dataclass equality: every field set, and equal
    assert index.candidate_of(handlers.service_row(env.data)) == slow


def test_services_changed_while_the_index_loads_are_not_lost(any_db: Database) -> None:
    """The first lookup loads the directory inside a transaction that has already changed
    a service: memory takes the committed versions only, the transaction sees its own."""
    upsert_elsewhere(any_db, service_upserted("svc-1"), service_upserted("svc-2"))
    policy = Policy(index=DirectoryIndex())
    with any_db.transaction() as session:
        handlers.on_service_upserted(session, service_upserted(
            "svc-2", status="inactive", updated_at=datetime.now(UTC) + timedelta(seconds=1)),
            policy)
        found = policy.index.lookup(session, "housing", _cell())  # type: ignore[union-attr]
        assert [c.status for c in found.candidates] == ["active", "inactive"]
    with any_db.transaction() as session:
        found = policy.index.lookup(session, "housing", _cell())  # type: ignore[union-attr]
    assert [c.status for c in found.candidates] == ["active", "inactive"]
    sv = tables.service_view.c
    with any_db.engine.connect() as conn:
        assert conn.execute(select(sv.status).where(sv.service_id == "svc-2")).scalar_one() \
            == "inactive"


def test_a_worker_decides_without_reading_the_spatial_index_tables(
        any_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = Policy(index=DirectoryIndex())
    with any_db.transaction() as session:
        handlers.on_service_upserted(session, service_upserted("svc-fit"), policy)

    def forbidden(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the database's spatial index was read")

    monkeypatch.setattr(directory, "nearby", forbidden)
    monkeypatch.setattr(directory, "candidates_for", forbidden)
    env = referral_submitted()
    with any_db.transaction() as session:
        handlers.on_referral_submitted(session, env, policy)
    [proposal] = routing_events(any_db, env.subject)
    assert proposal.data["service_id"] == "svc-fit"
    assert load(any_db, "svc-fit") == (1, 0)
