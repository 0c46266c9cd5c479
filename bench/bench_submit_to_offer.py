"""Benchmark (not a test): submit referrals and time submit -> offer visible to the provider,
next to the raw kafka-python produce -> consume round trip through the same broker, measured
in the same run. Prints medians/percentiles and the ratio. Uses the local PostgreSQL and the
broker from KAFKA_BOOTSTRAP_SERVERS or a Tansu it starts."""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import requests
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from servicekit import demo
from servicekit import kafka as kafkakit
from servicekit.auth import mint_dev_token
from servicekit.provisioning import prepare
from servicekit.settings import SERVICE_MODULES, Settings
from servicekit.stack import base_env, start_stack
from servicekit.testing import start_infrastructure, wait_for


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def raw_round_trips(bootstrap: str, n: int, fetch_max_wait_ms: int) -> list[float]:
    topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()
    producer = kafkakit.make_producer(bootstrap, value_serializer=kafkakit.JsonSerializer())
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             value_deserializer=kafkakit.JsonDeserializer(),
                             fetch_max_wait_ms=fetch_max_wait_ms)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_end(tp)
    consumer.position(tp)
    out = []
    for i in range(n):
        started = time.perf_counter()
        producer.send(topic, value={"i": i}).get(timeout=10)
        got = False
        while not got:
            for records in consumer.poll(timeout_ms=100).values():
                got = any(r.value["i"] == i for r in records)
        out.append((time.perf_counter() - started) * 1000)
    producer.close()
    consumer.close()
    return out


def pipeline(stack_urls: dict[str, str], settings: Settings, n: int) -> list[float]:
    officer = {"Authorization": "Bearer " + mint_dev_token(settings, sub="bench-officer",
                                                            role="officer", agency=demo.AGENCY)}
    provider = {"Authorization": "Bearer " + mint_dev_token(settings, sub="bench-staff",
                                                             role="provider", org=demo.DEMO_ORG_ID)}
    admin = {"Authorization": "Bearer " + mint_dev_token(settings, sub="bench-admin", role="admin")}
    registry, intake = stack_urls["provider-registry"], stack_urls["referral-intake"]
    r = requests.put(f"{registry}/v1/services/{demo.DEMO_SERVICE_ID}/capacity",
                     json={"maximum": 100000, "accepting": True}, headers=admin, timeout=10)
    r.raise_for_status()
    time.sleep(2)  # let matching apply the capacity change before the clock starts
    session = requests.Session()
    out = []
    for _ in range(n):
        body = {"need": "housing", "urgency": "urgent",
                "subject": {"given_name": "Bench", "age": 30},
                "location": {"lat": 47.61, "lon": -122.33},
                "consent": {"share_with_provider": False, "referrer_updates": "milestones",
                            "contact_methods": [], "obtained_via": "verbal"}}
        started = time.perf_counter()
        resp = session.post(f"{intake}/v1/referrals", json=body, timeout=10,
                            headers={**officer, "Idempotency-Key": str(uuid.uuid4())})
        resp.raise_for_status()
        rid = resp.json()["id"]

        def visible() -> bool:
            got = session.get(f"{intake}/v1/referrals/{rid}", headers=provider, timeout=5)
            return got.status_code == 200 and got.json()["status"] == "offered"

        wait_for(visible, timeout=30, interval=0.005, message="offer visible")
        out.append((time.perf_counter() - started) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=200)
    args = parser.parse_args()
    var = Path(tempfile.mkdtemp(prefix="bench-"))
    infra = start_infrastructure(var)
    stack = None
    try:
        dbs = {s: infra.new_database(s) for s in SERVICE_MODULES}
        prepare(dbs)
        env = base_env(var / "var", infra.kafka, dbs)
        env["LOG_LEVEL"] = "WARNING"
        stack = start_stack(env, var / "logs")
        settings = Settings.from_env("cli", env)
        raw = raw_round_trips(infra.kafka, args.n, settings.int("KAFKA_FETCH_MAX_WAIT_MS"))
        e2e = pipeline(stack.urls, settings, args.n)
    finally:
        if stack is not None:
            stack.stop_all()
        infra.close()
    print(f"\nbroker: {infra.kafka_origin} ({infra.kafka}); PostgreSQL: {infra.pg_origin}; "
          f"n={args.n}\n")
    print(f"| {'measure':<44} | {'p50 ms':>8} | {'p95 ms':>8} | {'p99 ms':>8} |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    for name, s in (("submit -> offer visible to provider (HTTP)", e2e),
                    ("raw kafka-python produce -> consume", raw)):
        print(f"| {name:<44} | {pct(s, 50):>8.1f} | {pct(s, 95):>8.1f} | {pct(s, 99):>8.1f} |")
    ratio = [pct(e2e, p) / pct(raw, p) for p in (50, 95, 99)]
    print(f"| {'ratio (pipeline / raw)':<44} | {ratio[0]:>7.1f}x | {ratio[1]:>7.1f}x | "
          f"{ratio[2]:>7.1f}x |")
    print(f"\nmean pipeline {statistics.mean(e2e):.1f} ms; the pipeline crosses the broker "
          "three times (submitted, proposed, status_changed) plus two outbox relays and HTTP.")


if __name__ == "__main__":
    main()
