"""Benchmark (not a test): notifications throughput on the real broker and PostgreSQL.

* events -> in-app notifications per second: offer events published to `referral.events`,
  consumed by the real consumer runner with the worker's handlers (each poll's records in
  one transaction: inbox claims, reminders, recipient look-up, notifications, deliveries).
  Rate over the steady state: from the end of the first poll's batch to the end of the last
  (the events of the later batches over that time). CPU per notification over the same
  window: the consumer thread's own CPU (poll, decode, handlers, commit) and the CPU of the
  PostgreSQL backends of the bench database (/proc, 10 ms ticks: coarse at 600 events).
  Baselines measured in the same run: the raw kafka-python consume rate of the same
  messages, and one bare INSERT + COMMIT per event on the same PostgreSQL server.
* event published -> notification stored p50/p95/p99 for events paced at 10/s, next to the
  raw kafka-python produce -> consume round trip.
* webhook deliveries per second: the dispatcher (claim, sign, POST, record the attempt)
  against a local HTTP receiver, next to a bare `requests` POST loop to the same receiver.
Target: at least 500 in-app notifications per second.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import requests
import sqlalchemy as sa
from benchlib import format_table, pct, raw_round_trips, record
from kafka import KafkaConsumer, TopicPartition

from notifications import bootstrap, channels, consumers, handlers
from notifications.tables import deliveries, metadata, notifications
from servicekit import events
from servicekit import kafka as kafkakit
from servicekit.consumer import ConsumerRunner
from servicekit.db import Database, run_migrations
from servicekit.runtime import runner_config
from servicekit.settings import Settings
from servicekit.testing import start_infrastructure

ORG = "bench-org"


def _offer_event(i: int) -> events.Envelope:
    rid = str(uuid.uuid4())
    data = {"referral_id": rid, "short_id": f"R-{i:06d}",
            "need": "housing", "urgency": "urgent", "agency_id": "bench-pd",
            "officer_ref": "bench-officer", "from_status": "submitted", "to_status": "offered",
            "offer": {"offer_id": f"offer-{rid}", "service_id": "svc-1", "organization_id": ORG,
                      "expires_at": "2030-01-01T12:00:00Z", "status": "open", "attempt": 1},
            "reason_code": None, "outcome_code": None, "actor_role": "system",
            "referrer_updates": "none", "proposal_id": None,
            "occurred_at": "2030-01-01T08:00:00Z"}
    return events.new_event(events.REFERRAL_STATUS_CHANGED, subject=rid, sequence=1, data=data,
                            source="referral-intake")


class _Marks:
    """After each poll's batch of the backlog: records so far, wall time, the consumer
    thread's CPU time and the CPU ticks of the database's PostgreSQL backends."""

    def __init__(self, db: Database, backlog: int) -> None:
        self.backlog, self.seen, self.rows = backlog, 0, []
        url = db.engine.url.render_as_string(hide_password=False)
        self.admin = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"),
                                     autocommit=True)
        self.database = db.engine.url.database

    def mark(self, records: int) -> None:
        if not records or self.seen >= self.backlog:
            return
        self.seen += records
        self.rows.append((records, time.perf_counter(), time.thread_time(), self._pg_ticks()))

    def _pg_ticks(self) -> dict[int, int]:
        ticks = {}
        for (pid,) in self.admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s",
                                         (self.database,)):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks[pid] = int(fields[11]) + int(fields[12])  # utime + stime
        return ticks

    def steady(self) -> tuple[float, float, float]:
        """(events/s, consumer-thread CPU ms per event, PostgreSQL CPU ms per event) from
        the end of the first batch to the end of the last."""
        if len(self.rows) < 2:
            raise SystemExit("the backlog fit in one poll: use more --events")
        (_, t0, c0, pg0), (_, t1, c1, pg1) = self.rows[0], self.rows[-1]
        events_ = sum(r[0] for r in self.rows[1:])
        pg = sum(v - pg0.get(pid, 0) for pid, v in pg1.items()) / os.sysconf("SC_CLK_TCK")
        self.admin.close()
        return (events_ / max(t1 - t0, 1e-9), (c1 - c0) * 1000 / max(events_, 1),
                pg * 1000 / max(events_, 1))


class _MarkedRunner(ConsumerRunner):
    marks: _Marks

    def process_batch(self, records: list[Any], stop: threading.Event | None = None) -> None:
        super().process_batch(records, stop)
        self.marks.mark(len(records))


def in_app_rate(settings: Settings, db: Database, n: int, paced: int
                ) -> tuple[tuple[float, float, float], float, list[float]]:
    """((notifications/s, consumer CPU ms/notification, PostgreSQL CPU ms/notification)
    through the consumer runner from a backlog, raw consume msgs/s of the same data, event
    published -> notification stored ms for ``paced`` events at 10/s)."""
    topic = f"bench-notify-{uuid.uuid4().hex[:8]}"
    from kafka.admin import KafkaAdminClient, NewTopic
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()
    producer = kafkakit.make_producer(settings.kafka_bootstrap_servers)
    for i in range(n):
        env = _offer_event(i)
        producer.send(topic, key=env.key, value=events.encode(env))
    producer.flush(60)
    raw = _raw_consume_rate(settings.kafka_bootstrap_servers, topic, n)
    (spec,) = consumers.consumer_specs()
    group = f"bench-notifications-{uuid.uuid4().hex[:6]}"
    runner = _MarkedRunner(name=group, db=db, producer=producer,
                           consumer=kafkakit.make_consumer(settings, group), topics=[topic],
                           handlers=spec.handlers, config=runner_config(settings))
    runner.marks = _Marks(db, n)
    stop = threading.Event()
    worker = threading.Thread(target=runner.run, args=(stop,))
    worker.start()
    try:
        _wait_count(db, n, 60 + n / 10)
        steady = runner.marks.steady()
        sent_at: dict[str, float] = {}
        for i in range(paced):
            env = _offer_event(n + i)
            sent_at[env.subject] = time.time()
            producer.send(topic, key=env.key, value=events.encode(env)).get(10)
            time.sleep(0.1)
        _wait_count(db, n + paced, 120)
        with db.engine.connect() as conn:
            rows = conn.execute(sa.select(notifications.c.referral_id,
                                          notifications.c.created_at).where(
                notifications.c.referral_id.in_(list(sent_at)))).all()
        lat = [(c.timestamp() - sent_at[r]) * 1000 for r, c in rows]
    finally:
        stop.set()
        worker.join(30)
        producer.close()
    return steady, raw, lat


def _wait_count(db: Database, want: int, timeout_s: float) -> None:
    count = sa.select(sa.func.count()).select_from(notifications)
    deadline = time.monotonic() + timeout_s
    with db.engine.connect() as conn:
        while (got := conn.execute(count).scalar_one()) < want:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {got}/{want} notifications stored in time")
            time.sleep(0.2)
            conn.rollback()


def _raw_consume_rate(bootstrap_servers: str, topic: str, n: int) -> float:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False,
                             fetch_max_wait_ms=50)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    seen, started = 0, time.perf_counter()
    while seen < n:
        for records in consumer.poll(timeout_ms=200).values():
            for r in records:
                events.decode(r.value)  # the decode work the runner does too
                seen += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return n / elapsed


def raw_insert_rate(db: Database, n: int) -> float:
    """One INSERT + COMMIT per event into a scratch table on the same server."""
    scratch = sa.Table(f"bench_raw_{uuid.uuid4().hex[:6]}", sa.MetaData(),
                       sa.Column("id", sa.String(36), primary_key=True),
                       sa.Column("body", sa.Text))
    scratch.create(db.engine)
    started = time.perf_counter()
    for _ in range(n):
        with db.engine.begin() as conn:
            conn.execute(scratch.insert().values(id=str(uuid.uuid4()), body="x" * 80))
    elapsed = time.perf_counter() - started
    scratch.drop(db.engine)
    return n / elapsed


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        return


class _Receiver(ThreadingHTTPServer):
    """The local receiver. A listen backlog like a real web server's: with the standard
    library's 5, the dispatcher's concurrent connections overflowed it and each round waited
    a one-second SYN retransmit (43 deliveries/s, the receiver's limit, not the dispatcher's)."""

    request_queue_size = 128
    daemon_threads = True


def webhook_rates(settings: Settings, db: Database, n: int) -> tuple[float, float, list[float]]:
    """(dispatcher deliveries/s, raw signed POST/s, raw per-POST ms)."""
    server = _Receiver(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        session = requests.Session()
        body = b'{"delivery_id":"x","notification":{"id":"y"}}'
        post_ms = []
        started = time.perf_counter()
        for _ in range(n):
            one = time.perf_counter()
            ts = str(int(time.time()))
            session.post(url, data=body, timeout=5, headers={
                channels.TIMESTAMP_HEADER: ts,
                channels.SIGNATURE_HEADER: channels.sign("whsec_x", ts, body)}).close()
            post_ms.append((time.perf_counter() - one) * 1000)
        raw = n / (time.perf_counter() - started)
        from notifications import queries
        with db.transaction() as s:
            queries.register_webhook(s, ORG, url)
        for i in range(n):
            with db.transaction() as s:
                handlers.store(s, str(uuid.uuid4()), [_draft(i)])
        dispatcher = bootstrap.dispatcher(settings, db)
        started = time.perf_counter()
        while dispatcher.run_once():
            pass
        elapsed = time.perf_counter() - started
        with db.engine.connect() as conn:
            sent = conn.execute(sa.select(sa.func.count()).select_from(deliveries)
                                .where(deliveries.c.status == "sent")).scalar_one()
        if sent < n:
            raise SystemExit(f"only {sent}/{n} webhook deliveries sent")
        return n / elapsed, raw, post_ms
    finally:
        server.shutdown()
        server.server_close()


def _draft(i: int) -> Any:
    from notifications import domain
    facts = domain.Facts(referral_id=str(uuid.uuid4()), short_id=f"R-B{i:05d}", need="housing",
                         urgency="urgent")
    return domain.Draft(recipient_kind="org", recipient_id=ORG, kind="offer_made",
                        referral_id=facts.referral_id, short_id=facts.short_id,
                        title=f"New {facts.label}", body=f"New {facts.label}", link=facts.link)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=600)
    parser.add_argument("--webhooks", type=int, default=300)
    parser.add_argument("--paced", type=int, default=100)
    args = parser.parse_args()
    var = Path(tempfile.mkdtemp(prefix="bench-notifications-"))
    infra = start_infrastructure(var)
    try:
        env = {"VAR_DIR": str(var / "var"), "KAFKA_BOOTSTRAP_SERVERS": infra.kafka,
               "NOTIFICATIONS_DATABASE_URL": infra.new_database("notifications"),
               "WEBHOOK_ALLOW_HTTP": "1", "WEBHOOK_ALLOW_PRIVATE_TARGETS": "1",
               "LOG_LEVEL": "WARNING"}
        settings = Settings.from_env("notifications", env)
        run_migrations(settings.database_url, bootstrap.MIGRATIONS)
        db = Database(settings.database_url, metadata)
        (rate, cpu_ms, pg_ms), raw_consume, lat = in_app_rate(settings, db, args.events,
                                                              args.paced)
        raw_tx = raw_insert_rate(db, 1000)
        rows = [record("notifications", f"events -> in-app notifications ({args.events}, "
                       "consumer runner, batched)", rate, "notifications/s",
                       baseline="bare INSERT+COMMIT per event", baseline_value=raw_tx,
                       target=">= 500/s", met=rate >= 500),
                record("notifications", "consumer thread CPU per notification (poll, decode, "
                       "handlers, commit)", cpu_ms, "ms"),
                record("notifications", "PostgreSQL backend CPU per notification", pg_ms, "ms"),
                record("notifications", "raw kafka-python consume+decode, same events",
                       raw_consume, "msgs/s")]
        raw_rt = raw_round_trips(infra.kafka, args.paced, settings.int("KAFKA_FETCH_MAX_WAIT_MS"))
        for p in (50, 95, 99):
            rows.append(record("notifications", f"event published -> notification stored p{p}"
                               f" ({args.paced} at 10/s)", pct(lat, p), "ms",
                               baseline=f"raw produce->consume p{p}",
                               baseline_value=pct(raw_rt, p)))
        hooks, raw_post, post_ms = webhook_rates(settings, db, args.webhooks)
        rows.append(record("notifications", f"webhook deliveries, 1 dispatcher ({args.webhooks})",
                           hooks, "deliveries/s", baseline="bare signed requests POST loop",
                           baseline_value=raw_post))
        rows += [record("notifications", f"webhook POST p{p} (raw loop)", pct(post_ms, p), "ms")
                 for p in (50, 95, 99)]
        db.dispose()
    finally:
        infra.close()
    print(format_table(rows))


if __name__ == "__main__":
    main()
