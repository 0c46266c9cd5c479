"""Benchmark (not a test): matching's decisions over large directories.

* decisions/s in-process over 10,000 and 100,000 services (PostgreSQL), read-only: the
  worker's in-memory directory index (``matching.index``: candidates from memory, their
  load, history and the changes since the last look read from the database in one
  statement; then the hard constraints and the score), and, as before it, the database's
  spatial index (``directory.candidates_for``, still the api's ``/v1/simulate`` path); next
  to a linear scan of the same services (every service evaluated per decision, the
  directory already in memory: the cheapest possible scan, so the ratio is a lower bound);
* the full transaction a submitted referral causes (store it, decide, reserve with the
  conditional UPDATE, decision row, outbox, commit): one transaction per referral, and as
  the worker's consumer runs it (``ConsumerRunner.process_batch``: decode, inbox, handler,
  one commit per batch of ``CONSUMER_BATCH_SIZE`` records);
* proposals/s through Kafka: referral.submitted published in a burst, the worker decides
  and its relay publishes routing.decisions; next to raw kafka-python produce -> consume
  throughput of as many messages through the same broker in the same run.

The directory: services spread uniformly over a 660 x 420 km region (about Great Britain's
size), 1-2 of the 10 needs each, a 5-25 km radius (0.1 % hotlines serving everywhere),
capacity 1-20, random age limits, languages and populations. Decisions of both indexes are
checked against the linear scan: same ranking, same eliminations (see
``check_against_linear_scan``). CPU per decision is reported for this process and for the
PostgreSQL backend(s), because on a shared, loaded machine wall-clock rates mostly measure
the load.
"""
from __future__ import annotations

import os
import random
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
from benchlib import pct, record

from matching import bootstrap, consumers, directory, domain, eligibility, handlers, tables
from matching.decide import Policy
from matching.index import DirectoryIndex
from servicekit import events, geo
from servicekit import kafka as kafkakit
from servicekit.consumer import ConsumerRunner, RunnerConfig
from servicekit.db import Database, run_migrations
from servicekit.runtime import build_components
from servicekit.settings import Settings
from servicekit.testing import start_infrastructure

REGION = (50.0, 56.0, -5.0, 1.0)  # lat_min, lat_max, lon_min, lon_max
LANGS = ("en", "es", "pl", "ur", "so", "ar", "pt", "fr")


def service_data(i: int, rng: random.Random, now: datetime) -> dict[str, Any]:
    lat, lon = rng.uniform(*REGION[:2]), rng.uniform(*REGION[2:])
    hotline = rng.random() < 0.001
    age_min = rng.choice([None, None, None, 16, 18, 25])
    return {
        "service_id": f"svc-{i:06d}", "organization_id": f"org-{i // 4:06d}",
        "status": "active" if rng.random() < 0.95 else "inactive",
        "categories": sorted(set(rng.sample(events.NEEDS, rng.choice([1, 1, 2])))),
        "locations": [] if hotline else [{"location_id": f"loc-{i}", "lat": lat, "lon": lon,
                                          "geohash": geo.encode(lat, lon, 9)}],
        "service_area": {"radius_km": None if hotline else rng.uniform(5, 25),
                         "geohashes": []},
        "age_min": age_min, "age_max": rng.choice([None, None, None, 24, 64]),
        "genders": [], "populations": [] if rng.random() < 0.9 else ["veteran"],
        "languages": sorted(set(rng.sample(LANGS, 2)) | {"en"}),
        "interpretation_available": rng.random() < 0.3,
        "schedule": {"always_open": rng.random() < 0.3 or hotline,
                     "timezone": "Europe/London",
                     "hours": [{"byday": d, "opens_at": "09:00", "closes_at": "17:00"}
                               for d in ("MO", "TU", "WE", "TH", "FR")]},
        "capacity": {"maximum": rng.randint(1, 20), "accepting": rng.random() < 0.9,
                     "available": None},
        "notification_channels": ["in_app"], "updated_at": events.format_time(now),
    }


# secondary indexes rebuilt once after the bulk load (one sort each) instead of being kept
# up to date row by row: the PostgreSQL statements to drop and to re-create them
_LOAD_INDEXES = (
    ("ALTER TABLE service_cells DROP CONSTRAINT pk_service_cells",
     ("ALTER TABLE service_cells ADD CONSTRAINT pk_service_cells "
     "PRIMARY KEY (category, cell, service_id)")),
    ("DROP INDEX ix_service_cells_service",
     "CREATE INDEX ix_service_cells_service ON service_cells (service_id)"),
    ("DROP INDEX ix_service_categories_category",
     ("CREATE INDEX ix_service_categories_category ON service_categories "
     "(category, service_id)")),
    ("DROP INDEX ix_directory_changes_xact",
     "CREATE INDEX ix_directory_changes_xact ON directory_changes (xact)"),
)


def bulk_load(db: Database, n: int, seed: int) -> None:
    """Write n services the way ``on_service_upserted`` stores and indexes them, in bulk
    (COPY; the index tables' secondary indexes dropped meanwhile and rebuilt at the end).
    Their ``directory_changes`` rows say xact 0, as a migration leaves existing services:
    older than any in-memory index, which loads them whole."""
    rng, now = random.Random(seed), datetime.now(UTC)
    counts: dict[str, int] = {directory.ALL: n}
    with db.transaction() as session:
        session.execute(sa.text("SET LOCAL synchronous_commit = off"))
        session.execute(sa.text("SET LOCAL maintenance_work_mem = '256MB'"))
        for drop, _ in _LOAD_INDEXES:
            session.execute(sa.text(drop))
        for start in range(0, n, 5000):
            views, cats, index, loads, changes = [], [], [], [], []
            for i in range(start, min(n, start + 5000)):
                row = handlers.service_row(service_data(i, rng, now))
                views.append(row)
                loads.append({"service_id": row["service_id"], "open_offers": 0,
                              "active_cases": 0, "updated_at": now})
                changes.append({"service_id": row["service_id"], "xact": 0})
                for category in row["categories"]:
                    counts[category] = counts.get(category, 0) + 1
                    cats.append({"service_id": row["service_id"], "category": category})
                index += directory.index_rows(row)
            for table, rows in ((tables.service_view, views), (tables.service_categories, cats),
                                (tables.service_cells, index), (tables.service_load, loads),
                                (tables.directory_changes, changes)):
                _copy(session, table, rows)
        for _, create in _LOAD_INDEXES:
            session.execute(sa.text(create))
        session.execute(sa.delete(tables.registry_counts))
        session.execute(tables.registry_counts.insert(),
                        [{"category": k, "services": v} for k, v in counts.items()])
    with db.transaction() as session:
        session.execute(sa.text("ANALYZE"))


def _copy(session: Any, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL COPY (the bench's loader only: ~10x faster than INSERTs for 100k rows)."""
    from psycopg.types.json import Json

    names = list(rows[0])
    json_cols = {c.name for c in table.columns if isinstance(c.type, sa.JSON)}
    raw = session.connection().connection.driver_connection
    with raw.cursor().copy(f"COPY {table.name} ({', '.join(names)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([Json(row[n]) if n in json_cols else row[n] for n in names])


def referral(rng: random.Random, i: int) -> domain.Referral:
    where = geo.coarsen(rng.uniform(*REGION[:2]), rng.uniform(*REGION[2:]))
    return domain.Referral(
        referral_id=str(uuid.UUID(int=rng.getrandbits(128))), need=rng.choice(events.NEEDS),
        urgency=rng.choice(events.URGENCIES), lat=where["lat"], lon=where["lon"],
        geohash=where["geohash"], age=rng.randint(10, 80),
        preferred_language=rng.choice(LANGS), needs_interpreter=rng.random() < 0.2)


def submitted(r: domain.Referral) -> events.Envelope:
    return events.new_event(events.REFERRAL_SUBMITTED, subject=r.referral_id, sequence=1,
                            source="referral-intake", data={
        "referral_id": r.referral_id, "short_id": "R-BENCH1", "need": r.need,
        "urgency": r.urgency, "coarse_location": {"geohash": r.geohash, "lat": r.lat,
                                                   "lon": r.lon},
        "eligibility": {"age": r.age, "preferred_language": r.preferred_language,
                        "needs_interpreter": r.needs_interpreter, "flags": []},
        "consent": {"share_with_provider": False, "referrer_updates": "none",
                    "contact_methods": []},
        "agency_id": "bench-pd", "officer_ref": "off-bench", "submitted_at": datetime.now(UTC)})


def backend_cpu_s(session: Any) -> float:
    """CPU seconds the PostgreSQL backend serving ``session`` has used (user + system, from
    /proc: the database runs on this machine), so a decision's database share is counted
    in CPU time too, which the machine's load does not distort the way it does wall time."""
    pid = session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    return _proc_cpu_s(pid)


def _proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:  # a backend that has gone meanwhile
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backends_cpu_s(db: Database) -> float:
    """CPU seconds of every PostgreSQL backend connected to ``db``'s database (the
    committed passes use whichever pooled connections they get)."""
    with db.engine.connect() as conn:
        pids = conn.execute(sa.text("SELECT pid FROM pg_stat_activity "
                                    "WHERE datname = current_database()")).scalars().all()
    return sum(_proc_cpu_s(pid) for pid in pids)


Decide = Callable[[Any, domain.Referral], tuple[list[domain.Candidate], dict[str, int], int]]


def _read_only_pass(db: Database, refs: list[domain.Referral], now: datetime,
                    decide: Decide) -> dict[str, Any]:
    """Decide (read-only) for every referral: rate, latencies and CPU per decision
    (this process and the database backend), and what each decision examined."""
    lat_ms = []
    examined = fit = 0
    with db.transaction() as session:
        db_cpu = backend_cpu_s(session)
        started, cpu = time.perf_counter(), time.process_time()
        for r in refs:
            t0 = time.perf_counter()
            found, pre, seen = decide(session, r)
            domain.evaluate(r, found, now, domain.DEFAULT_WEIGHTS, pre)
            lat_ms.append((time.perf_counter() - t0) * 1000)
            examined, fit = examined + seen, fit + len(found)
        rate = len(refs) / (time.perf_counter() - started)
        client_ms = (time.process_time() - cpu) / len(refs) * 1000
        db_ms = (backend_cpu_s(session) - db_cpu) / len(refs) * 1000
    return {"rate": rate, "lat_ms": lat_ms, "client_cpu_ms": client_ms, "db_cpu_ms": db_ms,
            "examined": examined / len(refs), "covering": fit / len(refs)}


def check_against_linear_scan(everything: list[domain.Candidate], found: list[domain.Candidate],
                              pre: dict[str, int], r: domain.Referral, now: datetime) -> None:
    """The index decides exactly as a linear scan over every service: same ranking (ids and
    scores), same total; and per constraint exactly as a linear scan that checks the area
    right after the category (``directory.candidates_for``'s documented counting)."""
    n = len(everything)
    scan = domain.evaluate(r, everything, now)
    fast = domain.evaluate(r, found, now, domain.DEFAULT_WEIGHTS, pre)
    assert [(x.candidate.service_id, x.score) for x in scan.ranked] == [
        (x.candidate.service_id, x.score) for x in fast.ranked], r
    assert scan.considered == fast.considered == n, (scan.considered, fast.considered)
    offering = [c for c in everything if r.need in c.categories]
    covering = [c for c in offering if eligibility.in_area(r, c)]
    assert [c.service_id for c in covering] == [c.service_id for c in found], r
    area_first = domain.evaluate(r, covering, now, domain.DEFAULT_WEIGHTS, {
        "category": n - len(offering), "out_of_area": len(offering) - len(covering)})
    assert area_first.eliminated == fast.eliminated, (area_first.eliminated, fast.eliminated)
    assert area_first.excluded == fast.excluded and area_first.reasons == fast.reasons


class _Record(NamedTuple):
    """What the consumer runner reads of a Kafka record."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def bench_decisions(db: Database, n: int, reps: int, scan_reps: int) -> None:
    rng, now = random.Random(7), datetime.now(UTC)
    cache, memory = directory.CandidateCache(), DirectoryIndex()
    target, goal = (">= 2,000/s", 2000) if n == 10_000 else (">= 500/s", 500)
    with db.transaction() as session:
        t0, w0 = time.process_time(), time.perf_counter()
        memory.lookup(session, events.NEEDS[0], referral(rng, 0).geohash)  # loads it
        load_cpu, load_wall = time.process_time() - t0, time.perf_counter() - w0
        warmed = cache.warm(session)
        everything = directory.every_service(session)
    print(f"  {n:,} services: in-memory index loaded in {load_cpu:.1f} s CPU ({load_wall:.1f} s"
          f" wall); {warmed:,} snapshots parsed into the database path's cache")
    scan_ms = []
    for r in (referral(rng, i) for i in range(scan_reps)):
        t0 = time.perf_counter()  # the baseline
        domain.evaluate(r, everything, now)
        scan_ms.append((time.perf_counter() - t0) * 1000)
        with db.transaction() as session:  # the proof neither index loses anything
            found = memory.lookup(session, r.need, r.geohash, (r.lat, r.lon))
            from_db, pre = directory.candidates_for(session, r.need, r.geohash, None,
                                                    (r.lat, r.lon))
        check_against_linear_scan(everything, found.candidates, found.pre, r, now)
        check_against_linear_scan(everything, from_db, pre, r, now)
    scan_rate = 1000 / (sum(scan_ms) / len(scan_ms))

    def from_memory(session: Any, r: domain.Referral) -> Any:
        found = memory.lookup(session, r.need, r.geohash, (r.lat, r.lon))
        return found.candidates, found.pre, found.examined

    def from_database(session: Any, r: domain.Referral) -> Any:
        """``directory.candidates_for``, with the index rows it read."""
        near = directory.nearby(session, r.need, r.geohash, cache, (r.lat, r.lon))
        total, offering = near.totals or directory.counts(session, r.need)
        return near.candidates, {"category": max(0, total - offering),
                                 "out_of_area": max(0, offering - len(near.candidates))
                                 }, near.rows_read

    for label, decide, count in (("in-memory index", from_memory, reps),
                                 ("PostgreSQL index, warm cache", from_database, reps // 2)):
        refs = [referral(rng, i) for i in range(count)]  # new referrals each pass
        m = _read_only_pass(db, refs, now, decide)
        rate, lat_ms = m["rate"], m["lat_ms"]
        cpu_total = m["client_cpu_ms"] + m["db_cpu_ms"]
        record("matching", f"decisions/s read-only, {n:,} services ({label})", rate,
               "/s", baseline="linear scan (in memory)", baseline_value=scan_rate,
               target=target, met=rate >= goal, p50_ms=pct(lat_ms, 50),
               p95_ms=pct(lat_ms, 95), p99_ms=pct(lat_ms, 99),
               examined_mean=m["examined"], candidates_mean=m["covering"],
               client_cpu_ms=m["client_cpu_ms"], db_cpu_ms=m["db_cpu_ms"],
               cpu_bound_rate=1000 / cpu_total, load_average=os.getloadavg()[0])
        print(f"  {n:,} services, {label}: read-only {rate:,.0f}/s (p50 {pct(lat_ms, 50):.2f} "
              f"ms, p95 {pct(lat_ms, 95):.2f} ms, p99 {pct(lat_ms, 99):.2f} ms); CPU "
              f"{m['client_cpu_ms']:.2f} ms client + {m['db_cpu_ms']:.2f} ms database per "
              f"decision = {1000 / cpu_total:,.0f}/s CPU-bound; {m['examined']:.1f} index "
              f"entries examined, {m['covering']:.1f} covering candidates per decision; "
              f"linear scan {scan_rate:,.1f}/s (p50 {pct(scan_ms, 50):.0f} ms); load average "
              f"{os.getloadavg()[0]:.1f}")
    policy = Policy(index=memory)
    envs = [submitted(referral(rng, i)) for i in range(reps // 2)]  # built before timing
    full_ms = []
    db_cpu = backends_cpu_s(db)
    started, cpu = time.perf_counter(), time.process_time()
    for env in envs:
        t0 = time.perf_counter()
        with db.transaction() as session:
            handlers.on_referral_submitted(session, env, policy)
        full_ms.append((time.perf_counter() - t0) * 1000)
    full_rate = len(full_ms) / (time.perf_counter() - started)
    full_cpu_ms = (time.process_time() - cpu) / len(full_ms) * 1000
    full_db_ms = (backends_cpu_s(db) - db_cpu) / len(full_ms) * 1000
    record("matching", f"decisions/s committed one by one, {n:,} services "
           "(store+decide+reserve+outbox+commit)", full_rate, "/s",
           baseline="linear scan (in memory, no writes)", baseline_value=scan_rate,
           target=target, met=full_rate >= goal, p50_ms=pct(full_ms, 50),
           p95_ms=pct(full_ms, 95), p99_ms=pct(full_ms, 99), client_cpu_ms=full_cpu_ms,
           db_cpu_ms=full_db_ms, cpu_bound_rate=1000 / (full_cpu_ms + full_db_ms),
           load_average=os.getloadavg()[0])
    print(f"  {n:,} services: committed one by one {full_rate:,.0f}/s (p50 "
          f"{pct(full_ms, 50):.2f} ms, p95 {pct(full_ms, 95):.2f} ms, p99 "
          f"{pct(full_ms, 99):.2f} ms); CPU {full_cpu_ms:.2f} ms client + {full_db_ms:.2f} ms "
          f"database per decision = {1000 / (full_cpu_ms + full_db_ms):,.0f}/s CPU-bound")
    bench_consumer_batches(db, n, reps, rng, policy, target, goal, scan_rate)


def bench_consumer_batches(db: Database, n: int, count: int, rng: random.Random,
                           policy: Policy, target: str, goal: int, scan_rate: float) -> None:
    """The worker's way: records through the kit's consumer runner (decode, inbox claim,
    handler, one commit per ``batch_size`` records), in-process (no broker: the records are
    built here, as a poll would return them)."""
    config = RunnerConfig()  # batch_size: the CONSUMER_BATCH_SIZE default
    spec = consumers.consumer_specs(policy)[0]
    runner = ConsumerRunner(name=f"bench-{uuid.uuid4().hex[:6]}", db=db, consumer=None,
                            producer=None, topics=spec.topics, handlers=spec.handlers,
                            config=config)
    envs = [submitted(referral(rng, i)) for i in range(count)]
    records = [_Record(events.REFERRAL_EVENTS, 0, i, e.subject.encode(), events.encode(e),
                       list(events.headers_for(e))) for i, e in enumerate(envs)]
    before = _decisions(db)
    db_cpu = backends_cpu_s(db)
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(records), config.batch_size):
        runner.process_batch(records[i:i + config.batch_size])
    rate = len(records) / (time.perf_counter() - started)
    cpu_ms = (time.process_time() - cpu) / len(records) * 1000
    db_ms = (backends_cpu_s(db) - db_cpu) / len(records) * 1000
    made = _decisions(db) - before
    assert made == len(records), (made, len(records))  # one decision per referral, no more
    record("matching", f"decisions/s committed in consumer batches of {config.batch_size}, "
           f"{n:,} services (decode+inbox+store+decide+reserve+outbox)", rate, "/s",
           baseline="linear scan (in memory, no writes)", baseline_value=scan_rate,
           target=target, met=rate >= goal, client_cpu_ms=cpu_ms, db_cpu_ms=db_ms,
           cpu_bound_rate=1000 / (cpu_ms + db_ms), load_average=os.getloadavg()[0])
    print(f"  {n:,} services: committed in consumer batches of {config.batch_size} "
          f"{rate:,.0f}/s; CPU {cpu_ms:.2f} ms client + {db_ms:.2f} ms database per decision "
          f"= {1000 / (cpu_ms + db_ms):,.0f}/s CPU-bound; load average "
          f"{os.getloadavg()[0]:.1f}")


def _decisions(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(tables.decisions))
                   .scalar_one())


def raw_throughput(bootstrap: str, n: int) -> float:
    """Raw kafka-python: produce n messages, consume them all (messages/s, same broker)."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()
    producer = kafkakit.make_producer(bootstrap)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             fetch_max_wait_ms=50)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_end(tp)
    consumer.position(tp)
    payload = b"x" * 700  # about a referral.submitted
    started = time.perf_counter()
    for i in range(n):
        producer.send(topic, key=str(i).encode(), value=payload)
    producer.flush()
    got = 0
    while got < n:
        got += sum(len(rs) for rs in consumer.poll(timeout_ms=200).values())
    elapsed = time.perf_counter() - started
    producer.close()
    consumer.close()
    return n / elapsed


def bench_kafka(settings: Settings, db: Database, n: int) -> None:
    """Burst n submissions at a running worker; time until every decision is relayed."""
    _, spec = bootstrap.worker(settings)
    from dataclasses import replace
    spec = replace(spec, consumers=[replace(c, name=f"bench-{uuid.uuid4().hex[:6]}")
                                    for c in spec.consumers])
    components, producer = build_components(settings, db, spec)
    stop = threading.Event()
    threads = [threading.Thread(target=run, args=(stop,), daemon=True) for _, run in components]
    for t in threads:
        t.start()
    outbox = tables.metadata.tables["outbox"]

    rng = random.Random(11)
    envs = [submitted(referral(rng, i)) for i in range(n)]
    keys = [e.subject for e in envs]

    def relayed() -> int:
        """Decisions for this burst's referrals that the relay has published."""
        with db.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(outbox).where(
                outbox.c.sent_at.is_not(None), outbox.c.key.in_(keys))).scalar_one())

    try:
        time.sleep(8)  # let the consumer join its group first (not part of the figure)
        # and let it load its in-memory directory index: one referral, decided, first
        warm = submitted(referral(random.Random(12), 0))
        producer.send(warm.topic, key=warm.key, value=events.encode(warm),
                      headers=events.headers_for(warm))
        producer.flush()
        deadline = time.perf_counter() + 120
        while not _relayed_one(db, warm.subject) and time.perf_counter() < deadline:
            time.sleep(0.1)
        started = time.perf_counter()
        for env in envs:
            producer.send(env.topic, key=env.key, value=events.encode(env),
                          headers=events.headers_for(env))
        producer.flush()
        deadline = started + 120
        while relayed() < n and time.perf_counter() < deadline:
            time.sleep(0.1)
        done = relayed()
        elapsed = time.perf_counter() - started
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        producer.close(timeout=5)
    with db.engine.connect() as conn:
        proposed = conn.execute(sa.select(sa.func.count()).select_from(tables.decisions).where(
            tables.decisions.c.outcome == "proposed",
            tables.decisions.c.referral_id.in_([e.subject for e in envs]))).scalar_one()
    rate = done / elapsed
    raw = raw_throughput(settings.kafka_bootstrap_servers, n)
    record("matching", "decisions/s through Kafka (submitted -> routing.decisions relayed)",
           rate, "/s", baseline="raw kafka-python produce+consume", baseline_value=raw,
           decisions=done, proposed=proposed, of=n)
    print(f"  Kafka: {done}/{n} decisions relayed in {elapsed:.1f} s = {rate:,.0f}/s "
          f"({proposed} proposals); raw produce+consume {raw:,.0f} msg/s")


def _relayed_one(db: Database, key: str) -> bool:
    outbox = tables.metadata.tables["outbox"]
    with db.engine.connect() as conn:
        return conn.execute(sa.select(outbox.c.id).where(
            outbox.c.key == key, outbox.c.sent_at.is_not(None))).first() is not None


def batches_only(url: str, repeats: int, profile: str | None) -> None:
    """``BENCH_MATCHING_BATCHES=k``: only the committed-in-consumer-batches unit over 10,000
    services, ``k`` passes of 800 referrals (medians are what to compare on a shared
    machine); ``BENCH_MATCHING_PROFILE=file``: cProfile of the last pass written there."""
    import cProfile
    db = Database(url, tables.metadata)
    try:
        bulk_load(db, 10_000, seed=10_000)
        rng, memory = random.Random(7), DirectoryIndex()
        with db.transaction() as session:
            memory.lookup(session, events.NEEDS[0], referral(rng, 0).geohash)  # loads it
        policy = Policy(index=memory)
        bench_consumer_batches(db, 10_000, 200, rng, policy, "-", 0, 1.0)  # warm-up
        for k in range(repeats):
            prof = cProfile.Profile() if profile and k == repeats - 1 else None
            if prof is not None:
                prof.enable()
            bench_consumer_batches(db, 10_000, 800, rng, policy, ">= 2,000/s", 2000, 1.0)
            if prof is not None:
                prof.disable()
                prof.dump_stats(profile)
    finally:
        db.dispose()


def main() -> int:
    var = Path(tempfile.mkdtemp(prefix="bench-matching-"))
    infra = start_infrastructure(var)
    try:
        if os.environ.get("BENCH_MATCHING_BATCHES"):
            url = infra.new_database("bench-matching")
            run_migrations(url, bootstrap.MIGRATIONS)
            batches_only(url, int(os.environ["BENCH_MATCHING_BATCHES"]),
                         os.environ.get("BENCH_MATCHING_PROFILE"))
            return 0
        for n, reps, scan_reps in ((10_000, 800, 20), (100_000, 400, 5)):
            url = infra.new_database("bench-matching")
            run_migrations(url, bootstrap.MIGRATIONS)
            db = Database(url, tables.metadata)
            t0 = time.perf_counter()
            bulk_load(db, n, seed=n)
            print(f"{n:,} services loaded and indexed in {time.perf_counter() - t0:.1f} s "
                  f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
            bench_decisions(db, n, reps, scan_reps)
            if n == 10_000:
                settings = Settings.from_env("matching", {
                    "MATCHING_DATABASE_URL": url, "KAFKA_BOOTSTRAP_SERVERS": infra.kafka,
                    "VAR_DIR": str(var), "LOG_LEVEL": "WARNING"})
                bench_kafka(settings, db, 1000)
            db.dispose()
    finally:
        infra.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
