"""What every benchmark shares: percentiles, a result row next to its raw baseline, and the
results file that `bench/run.py` merges into one table and `bench/results.json`.

A benchmark calls ``record(...)`` once per figure. When run by ``bench/run.py`` the rows go to
the file named by ``BENCH_RESULTS_FILE``; when a benchmark is run on its own they are only
printed.
"""
from __future__ import annotations

import http.client
import json
import os
import statistics
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import requests

from servicekit.testing import LOCAL_PG, sqlalchemy_url


def pct(samples: list[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation), the figure a reviewer can recompute."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def record(area: str, measure: str, value: float, unit: str, *, baseline: str | None = None,
           baseline_value: float | None = None, target: str | None = None,
           met: bool | None = None, **extra: Any) -> dict[str, Any]:
    """One figure of the benchmark table; ``ratio`` is value / baseline_value."""
    ratio = None
    if baseline_value:
        ratio = value / baseline_value
    row = {"area": area, "measure": measure, "value": value, "unit": unit,
           "baseline": baseline, "baseline_value": baseline_value, "ratio": ratio,
           "target": target, "met": met, **extra}
    path = os.environ.get("BENCH_RESULTS_FILE")
    if path:
        with Path(path).open("a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ("| area | measure | value | baseline (same run) | ratio | target | met |\n"
            "|---|---|---:|---|---:|---|---|")
    lines = [head]
    for r in rows:
        base = ""
        if r.get("baseline"):
            bv = r.get("baseline_value")
            base = f"{r['baseline']}: {bv:.4g} {r['unit']}" if bv is not None else r["baseline"]
        ratio = f"{r['ratio']:.2f}x" if r.get("ratio") else ""
        met = {True: "yes", False: "NO", None: ""}[r.get("met")]
        lines.append(f"| {r['area']} | {r['measure']} | {r['value']:.4g} {r['unit']} | {base} "
                     f"| {ratio} | {r.get('target') or ''} | {met} |")
    return "\n".join(lines)


def process_tree_peak_rss_mb(pid: int) -> float:
    """Largest peak resident set (VmHWM) of a process and its descendants, in MB.

    gunicorn serves from a forked worker, so the parent alone would under-report an api.
    """
    peaks = []
    for p in [pid, *_descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        except OSError:
            continue
    return max(peaks, default=0.0)


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its live descendants."""
    return pids_cpu_s([pid, *_descendants(pid)])


def pids_cpu_s(pids: Iterable[int]) -> float:
    """CPU seconds (user + system, from /proc) used so far by the processes ``pids``; a
    process gone counts 0."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def backends_cpu_s(database: str, admin_url: str = LOCAL_PG) -> float:
    """CPU seconds used so far by the PostgreSQL backends connected to ``database`` (the
    server runs on this machine)."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        pids = [r[0] for r in admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,))]
    return pids_cpu_s(pids)


@contextmanager
def scratch_database(prefix: str, admin_url: str = LOCAL_PG) -> Iterator[tuple[str, str]]:
    """A new empty database on the local PostgreSQL: (name, SQLAlchemy URL); dropped at the
    end, connections and all."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name, sqlalchemy_url(admin_url.rsplit("/", 1)[0] + f"/{name}")
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def raw_round_trips(bootstrap: str, n: int, fetch_max_wait_ms: int) -> list[float]:
    """The floor of any path through the broker: one kafka-python produce -> consume round
    trip (ms), with the same fetch wait the services use."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic

    from servicekit import kafka as kafkakit

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


def http_client(base: str, kind: str = "http.client") -> Any:
    """A function ``(method, path, body, headers) -> (status, body bytes)`` on one keep-alive
    connection to ``base``: ``http.client`` by default, or ``kind="requests"``. The load
    generator shares the machine's 2 cores with the system under test, and ``requests``
    costs about twice the client CPU per request (CPU the system under test does not get)."""
    if kind == "requests":
        session = requests.Session()

        def send_requests(method: str, path: str, body: bytes | None,
                          headers: dict[str, str]) -> tuple[int, bytes]:
            resp = session.request(method, base + path, data=body, headers=headers, timeout=30)
            return int(resp.status_code), resp.content
        return send_requests
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def send(method: str, path: str, body: bytes | None,
             headers: dict[str, str]) -> tuple[int, bytes]:
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()  # the next request reconnects
            raise
        if resp.will_close:
            conn.close()
        return int(resp.status), data
    return send


def report_passes(label: str, passes: list[tuple[float, float, int]], run: int, per: str,
                  detail: str = "") -> None:
    """Print a cost script's passes, each (client CPU s, backend CPU s, statements) per run
    of ``run`` items: medians per item (a ``per``), then each pass's CPU per run."""
    cpu = statistics.median(p[0] for p in passes) / run * 1e6
    db_cpu = statistics.median(p[1] for p in passes) / run * 1e6
    statements = statistics.median(p[2] for p in passes)
    print(f"{label}: {cpu:.0f} us client CPU + {db_cpu:.0f} us backend CPU per {per} "
          f"(median of {len(passes)} passes{' of ' + detail if detail else ''}); "
          f"{statements:.0f} statements per run of {run} ({statements / run:.2f} per {per}); "
          f"client CPU per run by pass {[round(p[0] * 1e3, 2) for p in passes]} ms, "
          f"backend {[round(p[1] * 1e3, 2) for p in passes]} ms")
