"""The kit's delivery guarantees against the real PostgreSQL and the real broker."""
from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Column, Integer, String, Table, func, select
from sqlalchemy.orm import Session

from servicekit import events, outbox
from servicekit import kafka as kafkakit
from servicekit.consumer import ConsumerRunner, RunnerConfig
from servicekit.db import Database, add_kit_tables, new_metadata
from servicekit.outbox import OutboxRelay
from servicekit.settings import Settings
from servicekit.testing import Infrastructure, iter_topic, wait_for

pytestmark = pytest.mark.integration

metadata = new_metadata()
add_kit_tables(metadata)
effects = Table("effects", metadata, Column("id", Integer, primary_key=True, autoincrement=True),
                Column("referral_id", String(36), nullable=False))


@pytest.fixture
def db(infra: Infrastructure) -> Iterator[Database]:
    database = Database(infra.new_database("kit"), metadata)
    metadata.create_all(database.engine)
    yield database
    database.dispose()


@pytest.fixture
def settings(infra: Infrastructure, tmp_path: Any) -> Settings:
    return Settings.from_env("matching", {"KAFKA_BOOTSTRAP_SERVERS": infra.kafka,
                                          "VAR_DIR": str(tmp_path)})


@pytest.fixture(scope="module", autouse=True)
def topics(infra: Infrastructure) -> None:
    kafkakit.bootstrap_topics(infra.kafka, partitions=3)


def _erased(referral_id: str) -> dict[str, Any]:
    return {"referral_id": referral_id, "occurred_at": "2026-01-01T00:00:00Z"}


def _emit(session: Session, referral_id: str) -> events.Envelope:
    return outbox.emit(session, events.REFERRAL_ERASED, subject=referral_id,
                       data=_erased(referral_id), source="test")


def _published(infra: Infrastructure) -> list[events.Envelope]:
    """The topic's events in order, skipping what other tests' poison cases left on the
    shared broker (these tests run in any order)."""
    out = []
    for record in iter_topic(infra.kafka, events.REFERRAL_EVENTS):
        try:
            out.append(events.decode(record.value))
        except events.PoisonMessage:
            continue
    return out


def _published_ids(infra: Infrastructure, wanted: set[str]) -> list[str]:
    return [e.id for e in _published(infra) if e.id in wanted]


def test_relay_publishes_what_committed_and_nothing_rolled_back(db: Database, infra: Infrastructure
                                                                ) -> None:
    kept, dropped = str(uuid.uuid4()), str(uuid.uuid4())
    with db.transaction() as s:
        committed = _emit(s, kept)
    with db.uow() as uow:
        rolled_back = _emit(uow.session, dropped)
        uow.rollback()
    relay = OutboxRelay(db, kafkakit.make_producer(infra.kafka))
    assert relay.run_once() == 1
    assert relay.run_once() == 0
    ids = _published_ids(infra, {committed.id, rolled_back.id})
    assert ids == [committed.id]
    assert outbox.backlog(db) == 0


def test_two_relays_side_by_side_publish_each_row_once_in_key_order(db: Database,
                                                                    infra: Infrastructure) -> None:
    referral = str(uuid.uuid4())
    with db.transaction() as s:
        envs = [_emit(s, referral) for _ in range(30)]
    stop = threading.Event()
    relays = [OutboxRelay(db, kafkakit.make_producer(infra.kafka), batch_size=7)
              for _ in range(2)]
    threads = [threading.Thread(target=r.run, args=(stop,)) for r in relays]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: outbox.backlog(db) == 0, message="outbox drained")
    finally:
        stop.set()
        for t in threads:
            t.join()
    records = _published(infra)
    mine = [e.sequence for e in records if e.subject == referral]
    assert mine == sorted(mine)
    assert sorted(mine) == [e.sequence for e in envs]


def test_idle_relay_is_woken_by_the_commit_not_by_its_poll(db: Database, infra: Infrastructure,
                                                          monkeypatch: Any) -> None:
    """The outbox trigger's NOTIFY wakes a waiting relay at the writer's commit: with both
    of its own polls a minute long, the row is still published within seconds."""
    monkeypatch.setattr(outbox, "NOTIFIED_IDLE_POLL_S", 60.0)
    relay = OutboxRelay(db, kafkakit.make_producer(infra.kafka), poll_interval_s=60.0)
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: relay._waker is not None, timeout=10, message="relay listening")
        stop.wait(0.5)  # its first round found nothing: it waits now
        with db.transaction() as s:
            env = _emit(s, str(uuid.uuid4()))
        wait_for(lambda: outbox.backlog(db) == 0, timeout=5, message="row published")
    finally:
        stop.set()
        thread.join()
    assert _published_ids(infra, {env.id}) == [env.id]


def _runner(db: Database, settings: Settings, group: str, seen: list[str],
            fail_on: str | None = None) -> ConsumerRunner:
    def handler(session: Session, env: events.Envelope) -> None:
        if env.subject == fail_on:
            raise RuntimeError("handler bug")
        session.execute(effects.insert().values(referral_id=env.subject))
        seen.append(env.subject)

    consumer = kafkakit.make_consumer(settings, group)
    return ConsumerRunner(name=group, db=db, consumer=consumer,
                          producer=kafkakit.make_producer(settings.kafka_bootstrap_servers),
                          topics=[events.REFERRAL_EVENTS],
                          handlers={events.REFERRAL_ERASED: handler},
                          config=RunnerConfig(max_retries=2, backoff_s=0.01))


def _count(db: Database, referral_id: str) -> int:
    with db.engine.connect() as c:
        return int(c.execute(select(func.count()).where(effects.c.referral_id == referral_id))
                   .scalar_one())


def _run_until(runner: ConsumerRunner, predicate: Any, timeout: float = 40) -> None:
    stop = threading.Event()
    t = threading.Thread(target=runner.run, args=(stop,))
    t.start()
    try:
        wait_for(predicate, timeout=timeout, message="consumer effect")
    finally:
        stop.set()
        t.join(timeout=30)


def _produce_raw(infra: Infrastructure, key: str, value: bytes) -> None:
    p = kafkakit.make_producer(infra.kafka)
    p.send(events.REFERRAL_EVENTS, key=key.encode(), value=value).get(timeout=30)
    p.close()


def test_duplicate_delivery_has_one_effect(db: Database, settings: Settings,
                                           infra: Infrastructure) -> None:
    referral = str(uuid.uuid4())
    env = events.new_event(events.REFERRAL_ERASED, subject=referral, sequence=1,
                           data=_erased(referral), source="test")
    for _ in range(3):
        _produce_raw(infra, referral, events.encode(env))
    marker = str(uuid.uuid4())
    _produce_raw(infra, referral, events.encode(events.new_event(
        events.REFERRAL_ERASED, subject=marker, sequence=1, data=_erased(marker),
        source="test")))
    seen: list[str] = []
    _run_until(_runner(db, settings, f"dup-{uuid.uuid4().hex[:6]}", seen),
               lambda: _count(db, marker) == 1)
    assert _count(db, referral) == 1


def test_poison_goes_to_dead_letter_with_headers_and_partition_keeps_flowing(
        db: Database, settings: Settings, infra: Infrastructure) -> None:
    key = str(uuid.uuid4())
    _produce_raw(infra, key, b"{not json")
    after = events.new_event(events.REFERRAL_ERASED, subject=key, sequence=1,
                             data=_erased(key), source="test")
    _produce_raw(infra, key, events.encode(after))  # same key: same partition, after poison
    group = f"poison-{uuid.uuid4().hex[:6]}"
    _run_until(_runner(db, settings, group, []), lambda: _count(db, key) == 1)
    dead = [r for r in iter_topic(infra.kafka, events.dlq_topic(events.REFERRAL_EVENTS))
            if r.key == key.encode()]
    assert len(dead) == 1
    headers = dict(dead[0].headers)
    assert headers["dlq.original_topic"] == events.REFERRAL_EVENTS.encode()
    assert headers["dlq.consumer_group"] == group.encode()
    assert int(headers["dlq.original_offset"]) >= 0 and "dlq.original_partition" in headers
    assert headers["dlq.error"].startswith(b"PoisonMessage")
    assert dead[0].value == b"{not json"


def test_failing_handler_is_retried_then_dead_lettered(db: Database, settings: Settings,
                                                       infra: Infrastructure) -> None:
    bad, good = str(uuid.uuid4()), str(uuid.uuid4())
    for rid in (bad, good):
        _produce_raw(infra, rid, events.encode(events.new_event(
            events.REFERRAL_ERASED, subject=rid, sequence=1, data=_erased(rid), source="test")))
    def dead_letters() -> list[Any]:
        return [r for r in iter_topic(infra.kafka, events.dlq_topic(events.REFERRAL_EVENTS),
                                      timeout_s=1) if r.key == bad.encode()]

    # bad and good may sit on different partitions: wait for both outcomes
    _run_until(_runner(db, settings, f"retry-{uuid.uuid4().hex[:6]}", [], fail_on=bad),
               lambda: _count(db, good) == 1 and dead_letters())
    dead = dead_letters()
    assert len(dead) == 1 and b"after 2 attempts" in dict(dead[0].headers)["dlq.error"]
    assert _count(db, bad) == 0


def test_unreachable_database_is_waited_for_not_dead_lettered(
        db: Database, settings: Settings, infra: Infrastructure) -> None:
    """Five times as many connection failures as the retry budget: the event waits for the
    database instead of going to the dead-letter topic, and has its effect once."""
    from sqlalchemy.exc import OperationalError

    rid = str(uuid.uuid4())
    _produce_raw(infra, rid, events.encode(events.new_event(
        events.REFERRAL_ERASED, subject=rid, sequence=1, data=_erased(rid), source="test")))
    outages = {"left": 10}
    runner = _runner(db, settings, f"outage-{uuid.uuid4().hex[:6]}", [])
    real = runner.handlers[events.REFERRAL_ERASED]

    def flaky(session: Session, env: events.Envelope) -> None:
        if env.subject == rid and outages["left"] > 0:
            outages["left"] -= 1
            raise OperationalError("SELECT 1", {}, ConnectionError("server closed the connection"))
        real(session, env)

    runner.handlers[events.REFERRAL_ERASED] = flaky
    _run_until(runner, lambda: _count(db, rid) == 1)
    assert outages["left"] == 0
    assert not [r for r in iter_topic(infra.kafka, events.dlq_topic(events.REFERRAL_EVENTS),
                                      timeout_s=1) if r.key == rid.encode()]


def test_consumer_killed_between_db_commit_and_offset_commit_has_one_effect(
        db: Database, settings: Settings, infra: Infrastructure) -> None:
    referral = str(uuid.uuid4())
    _produce_raw(infra, referral, events.encode(events.new_event(
        events.REFERRAL_ERASED, subject=referral, sequence=1, data=_erased(referral),
        source="test")))
    group = f"crash-{uuid.uuid4().hex[:6]}"
    crashing = _runner(db, settings, group, [])

    class Killed(BaseException):
        pass

    def die(record: Any) -> None:
        if record.key == referral.encode():
            raise Killed()

    crashing.after_db_commit = die
    stop = threading.Event()
    with pytest.raises(Killed):
        crashing.consumer.subscribe(crashing.topics)
        while not stop.is_set():  # the runner's loop, minus its offset commits
            for records in crashing.consumer.poll(timeout_ms=200).values():
                for record in records:
                    crashing.process(record)
    crashing.consumer.close(autocommit=False)  # the process died: no offset was committed
    assert _count(db, referral) == 1
    seen: list[str] = []
    restarted = _runner(db, settings, group, seen)
    redelivered: list[bytes] = []
    # called after the database commit for every handled record, duplicates included
    restarted.after_db_commit = lambda record: redelivered.append(record.key)
    _run_until(restarted, lambda: referral.encode() in redelivered)
    assert _count(db, referral) == 1
    assert referral not in seen  # the handler did not run again although it was redelivered


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_emit_many_numbers_several_events_of_one_subject_in_order(
        dialect: str, db: Database, tmp_path: Any) -> None:
    """A consumer batch may emit several events of one aggregate: they take consecutive
    sequences after those already taken, in the order given, each with its own cause."""
    if dialect == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'kit.db'}", metadata)
        metadata.create_all(db.engine)
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    with db.transaction() as s:
        _emit(s, a)  # a's sequence 1
    with db.transaction() as s:
        envs = outbox.emit_many(s, events.REFERRAL_ERASED,
                                [(a, _erased(a)), (b, _erased(b)), (a, _erased(a))],
                                source="test", causes=[("c1", "e1"), ("c2", "e2"), ("c3", "e3")])
    assert [(e.subject, e.sequence, e.correlation_id, e.causation_id) for e in envs] == [
        (a, 2, "c1", "e1"), (b, 1, "c2", "e2"), (a, 3, "c3", "e3")]
    with db.transaction() as s:
        assert _emit(s, a).sequence == 4 and _emit(s, b).sequence == 2
    stored = metadata.tables["outbox"]
    with db.engine.connect() as c:
        rows = [events.decode(r.payload) for r in c.execute(
            select(stored).order_by(stored.c.id))]
    assert [(e.subject, e.sequence) for e in rows] == [(a, 1), (a, 2), (b, 1), (a, 3), (a, 4),
                                                       (b, 2)]
    if dialect == "sqlite":
        db.dispose()
