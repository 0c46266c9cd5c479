"""Benchmark (not a test): the whole pipeline on real processes.

* submit -> provider notified (the provider organization's `offer_made` notification stored)
  p50/p95/p99 at fixed open-loop arrival rates, next to the raw kafka-python produce -> consume
  round trip through the same broker measured in the same run;
* the highest sustainable rate: the highest offered rate at which every acknowledged referral
  is notified, delivery keeps up with arrivals (>= 95 %) and the backlog drains within 5 s;
* peak resident memory (VmHWM) of every process (an api counts its gunicorn workers);
* after each run, the CPU each process used (% of a core, ms per referral, from /proc) and a
  per-hop breakdown of the latency (p50/p95/mean of each hop: api, each relay, each
  broker + fetch, each handler) from timestamps the databases already hold, so the hop
  that queues shows without adding any probe to the system.

Latency is measured from the client's clock just before the POST to the notification's
`created_at` written by the notifications worker on the same machine (same clock), so the
measurement itself puts no polling load on the system.
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa
from benchlib import (
    http_client,
    pct,
    process_tree_cpu_s,
    process_tree_peak_rss_mb,
    raw_round_trips,
    record,
)

from servicekit import demo
from servicekit.auth import mint_dev_token
from servicekit.provisioning import prepare
from servicekit.settings import SERVICE_MODULES, Settings
from servicekit.stack import base_env, start_stack
from servicekit.testing import start_infrastructure

BODY = {"need": "housing", "urgency": "urgent",
        "subject": {"given_name": "Bench", "age": 30},
        "location": {"lat": 47.61, "lon": -122.33},
        "consent": {"share_with_provider": False, "referrer_updates": "milestones",
                    "contact_methods": [], "obtained_via": "verbal"}}


def offered_run(intake: str, headers: dict[str, str], rate: float, seconds: float,
                clients: int = 16) -> tuple[dict[str, float], int, float]:
    """Send ``rate`` referrals per second for ``seconds`` (open loop: arrivals do not wait for
    earlier answers), each client thread on its own keep-alive ``http.client`` connection
    (``benchlib.http_client``: the load generator's CPU comes off the same 2 cores).
    Returns {referral id: submit wall time}, failures, achieved send rate."""
    n = int(rate * seconds)
    sent: dict[str, float] = {}
    failures = 0
    lock = threading.Lock()
    local = threading.local()
    body = json.dumps(BODY).encode()
    base = {**headers, "Content-Type": "application/json"}

    def one(at: float) -> None:
        nonlocal failures
        delay = at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        send = getattr(local, "send", None) or http_client(intake)
        local.send = send
        wall = time.time()
        try:
            status, answer = send("POST", "/v1/referrals", body,
                                  {**base, "Idempotency-Key": str(uuid.uuid4())})
            ok = status == 201
        except (OSError, http.client.HTTPException):
            ok = False
        with lock:
            if ok:
                sent[json.loads(answer)["id"]] = wall
            else:
                failures += 1

    start = time.monotonic() + 0.2
    with ThreadPoolExecutor(max_workers=clients) as pool:
        for i in range(n):
            pool.submit(one, start + i / rate)
    elapsed = time.monotonic() - start
    return sent, failures, n / elapsed


def notified_at(engine: sa.Engine, ids: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    with engine.connect() as conn:
        for chunk in range(0, len(ids), 500):
            rows = conn.execute(sa.text(
                "SELECT referral_id, min(created_at) FROM notifications WHERE kind='offer_made' "
                "AND recipient_kind='org' AND referral_id = ANY(:ids) GROUP BY referral_id"),
                {"ids": ids[chunk:chunk + 500]})
            for rid, created in rows:
                out[rid] = created.timestamp() if isinstance(created, datetime) else created
    return out


def wait_notified(engine: sa.Engine, sent: dict[str, float], timeout: float) -> tuple[dict[str, float], float]:
    """Wait until every sent referral is notified; returns the notified map and the drain time
    (seconds after the wait began)."""
    began = time.monotonic()
    got: dict[str, float] = {}
    while time.monotonic() - began < timeout:
        got = notified_at(engine, list(sent))
        if len(got) == len(sent):
            break
        time.sleep(0.2)
    return got, time.monotonic() - began


def _ts(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


def _rows(url: str, sql: str, ids: list[str]) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            out: list[Any] = []
            for chunk in range(0, len(ids), 500):
                out += conn.execute(sa.text(sql), {"ids": ids[chunk:chunk + 500]}).all()
            return out
    finally:
        engine.dispose()


HOPS = [
    ("api", "POST -> referral row (intake api)"),
    ("relay-intake-1", "referral row -> referral.submitted acked (intake relay)"),
    ("consume-matching", "acked -> matching inbox claim (broker + fetch)"),
    ("decide", "inbox claim -> decision row (matching handler)"),
    ("relay-matching", "decision row -> routing.proposed acked (matching relay)"),
    ("consume-intake", "acked -> intake inbox claim (broker + fetch)"),
    ("offer", "inbox claim -> offer row (intake handler)"),
    ("relay-intake-2", "offer row -> status_changed acked (intake relay)"),
    ("consume-notif", "acked -> notifications inbox claim (broker + fetch)"),
    ("notify", "inbox claim -> offer_made row (notifications handler)"),
]


def hop_breakdown(dbs: dict[str, str], sent: dict[str, float]) -> dict[str, list[float]]:
    """Per-hop delays (ms) of each notified referral, from timestamps the databases already
    hold, all written on this machine's clock: referral / decision / offer / notification
    ``created_at``, each outbox row's ``created_at`` and ``sent_at`` (set after the broker's
    ack), and each consumer's inbox ``processed_at`` (the claim at the start of its handling
    transaction). A row's ``created_at`` is taken inside its transaction, so a relay hop
    includes the time to commit it."""
    ids = list(sent)
    intake, matching, notif = (dbs["referral-intake"], dbs["matching"], dbs["notifications"])
    t: dict[str, dict[str, float]] = {r: {"post": sent[r]} for r in ids}
    note = _rows(notif, "SELECT n.referral_id, n.event_id, n.created_at, i.processed_at "
                 "FROM notifications n JOIN inbox i ON i.event_id = n.event_id "
                 "AND i.consumer = 'notifications' WHERE n.kind = 'offer_made' "
                 "AND n.recipient_kind = 'org' AND n.referral_id = ANY(:ids)", ids)
    offered_event: dict[str, str] = {}
    submitted: dict[str, str] = {}  # referral.submitted event id -> referral id
    for rid, event_id, created, claimed in note:
        if "notified" not in t[rid] or _ts(created) < t[rid]["notified"]:
            t[rid].update(notified=_ts(created), notif_claim=_ts(claimed))
            offered_event[rid] = event_id
    for rid, created in _rows(intake, "SELECT id, created_at FROM referrals "
                              "WHERE id = ANY(:ids)", ids):
        t[rid]["referral"] = _ts(created)
    for rid, event_type, event_id, created, acked in _rows(
            intake, "SELECT key, event_type, event_id, created_at, sent_at FROM outbox "
            "WHERE key = ANY(:ids) AND event_type IN ('referral.submitted', "
            "'referral.status_changed')", ids):
        if event_type == "referral.submitted" and acked is not None:
            t[rid].update(submitted_out=_ts(created), submitted_acked=_ts(acked))
            submitted[event_id] = rid
        elif offered_event.get(rid) == event_id and acked is not None:
            t[rid].update(offered_out=_ts(created), offered_acked=_ts(acked))
    for rid, created in _rows(intake, "SELECT referral_id, min(created_at) FROM offers "
                              "WHERE referral_id = ANY(:ids) GROUP BY referral_id", ids):
        t[rid]["offer"] = _ts(created)
    proposal: dict[str, str] = {}
    for rid, created, event_id, acked in _rows(
            matching, "SELECT d.referral_id, d.created_at, d.event_id, o.sent_at "
            "FROM decisions d JOIN outbox o ON o.event_id = d.event_id "
            "WHERE d.attempt = 1 AND d.referral_id = ANY(:ids)", ids):
        t[rid].update(decision=_ts(created), proposed_acked=_ts(acked) if acked else math.nan)
        proposal[rid] = event_id
    for event_id, claimed in _rows(matching, "SELECT event_id, processed_at FROM inbox "
                                   "WHERE consumer = 'matching' AND event_id = ANY(:ids)",
                                   list(submitted)):
        t[submitted[event_id]]["matching_claim"] = _ts(claimed)
    by_proposal = {e: r for r, e in proposal.items()}
    for event_id, claimed in _rows(intake, "SELECT event_id, processed_at FROM inbox "
                                   "WHERE consumer = 'referral-intake' AND event_id = ANY(:ids)",
                                   list(by_proposal)):
        t[by_proposal[event_id]]["intake_claim"] = _ts(claimed)
    chain = ["post", "referral", "submitted_acked", "matching_claim", "decision",
             "proposed_acked", "intake_claim", "offer", "offered_acked", "notif_claim",
             "notified"]
    out: dict[str, list[float]] = {name: [] for name, _ in HOPS}
    out["total"] = []
    for times in t.values():
        if not all(k in times and not math.isnan(times[k]) for k in chain):
            continue
        for (name, _label), a, b in zip(HOPS, chain, chain[1:]):
            out[name].append((times[b] - times[a]) * 1000)
        out["total"].append((times["notified"] - times["post"]) * 1000)
    return out


def print_breakdown(title: str, hops: dict[str, list[float]]) -> None:
    n = len(hops["total"])
    print(f"per-hop breakdown, {title} (n={n}; ms, p50 / p95 / mean)")
    for name, label in [*HOPS, ("total", "POST -> provider notified")]:
        xs = hops[name]
        mean = sum(xs) / len(xs) if xs else math.nan
        print(f"  {label:<58} {pct(xs, 50):7.1f} {pct(xs, 95):7.1f} {mean:7.1f}")


def cpu_snapshot(stack: Any) -> dict[str, float]:
    return {name: process_tree_cpu_s(proc.pid) for name, proc in stack.procs.items()}


def print_cpu(before: dict[str, float], after: dict[str, float], seconds: float,
              referrals: int) -> None:
    """CPU of each process (with its children) over a run: % of one core and ms per referral."""
    parts = []
    for name in sorted(after):
        used = after[name] - before.get(name, 0.0)
        if used > 0.05:
            parts.append(f"{name} {100 * used / seconds:.0f}% "
                         f"{1000 * used / max(referrals, 1):.1f}ms/ref")
    print("  cpu: " + ", ".join(parts) + f"; loadavg {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fixed-rate", type=float, default=50.0)
    parser.add_argument("--fixed-seconds", type=float, default=20.0)
    parser.add_argument("--rates", default="100,200,300,400")
    parser.add_argument("--step-seconds", type=float, default=8.0)
    args = parser.parse_args()
    var = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    infra = start_infrastructure(var)
    stack = None
    try:
        dbs = {s: infra.new_database(s) for s in SERVICE_MODULES}
        prepare(dbs)
        env = base_env(var / "var", infra.kafka, dbs)
        env.update(LOG_LEVEL="WARNING", WEB_THREADS="16")
        stack = start_stack(env, var / "logs")
        settings = Settings.from_env("cli", env)
        officer = {"Authorization": "Bearer " + mint_dev_token(
            settings, sub="bench-officer", role="officer", agency=demo.AGENCY)}
        admin = {"Authorization": "Bearer " + mint_dev_token(settings, sub="bench-admin",
                                                             role="admin")}
        registry, intake = stack.urls["provider-registry"], stack.urls["referral-intake"]
        requests.put(f"{registry}/v1/services/{demo.DEMO_SERVICE_ID}/capacity",
                     json={"maximum": 100_000, "accepting": True}, headers=admin,
                     timeout=10).raise_for_status()
        time.sleep(2)  # let matching apply the capacity change before the clock starts
        engine = sa.create_engine(dbs["notifications"])

        raw = raw_round_trips(infra.kafka, 200, settings.int("KAFKA_FETCH_MAX_WAIT_MS"))
        cpu0, wall0 = cpu_snapshot(stack), time.monotonic()
        sent, failures, achieved = offered_run(intake, officer, args.fixed_rate,
                                               args.fixed_seconds)
        got, _drain = wait_notified(engine, sent, timeout=120)
        cpu1 = cpu_snapshot(stack)
        lat = [(got[r] - t) * 1000 for r, t in sent.items() if r in got]
        print(f"fixed rate {args.fixed_rate}/s: sent {len(sent)} ok, {failures} failed, "
              f"achieved {achieved:.1f}/s, notified {len(got)}")
        print_cpu(cpu0, cpu1, time.monotonic() - wall0, len(sent))
        print_breakdown(f"{args.fixed_rate:g}/s", hop_breakdown(dbs, sent))
        for p in (50, 95, 99):
            target = "p95 < 250 ms" if p == 95 else None
            record("pipeline", f"submit -> provider notified p{p} at {args.fixed_rate:g}/s",
                   pct(lat, p), "ms", baseline="raw produce->consume", baseline_value=pct(raw, p),
                   target=target, met=(pct(lat, p) < 250) if p == 95 else None,
                   n=len(lat), lost=len(sent) - len(got), failures=failures)

        best = 0.0
        for rate in [float(r) for r in args.rates.split(",")]:
            cpu0, wall0 = cpu_snapshot(stack), time.monotonic()
            sent, failures, achieved = offered_run(intake, officer, rate, args.step_seconds,
                                                   clients=32)
            got, drain = wait_notified(engine, sent, timeout=60)
            cpu1, wall1 = cpu_snapshot(stack), time.monotonic()
            lat = [(got[r] - t) * 1000 for r, t in sent.items() if r in got]
            window = max(got.values(), default=0) - min(sent.values(), default=0)
            delivered = len(got) / window if window > 0 else 0.0
            ok = (failures == 0 and len(got) == len(sent) and achieved >= 0.95 * rate
                  and delivered >= 0.95 * rate and drain <= 5.0)
            print(f"offered {rate:g}/s: achieved send {achieved:.1f}/s, delivered "
                  f"{delivered:.1f}/s, failures {failures}, drain {drain:.1f}s, "
                  f"p95 {pct(lat, 95):.0f} ms -> {'sustained' if ok else 'NOT sustained'}")
            print_cpu(cpu0, cpu1, wall1 - wall0, len(sent))  # sending and draining
            print_breakdown(f"offered {rate:g}/s", hop_breakdown(dbs, sent))
            if not ok:
                break
            best = rate
        record("pipeline", "highest sustainable end-to-end rate (offered steps "
               f"{args.rates}/s)", best, "referrals/s", target=">= 200/s", met=best >= 200)

        for name, proc in sorted(stack.procs.items()):
            mb = process_tree_peak_rss_mb(proc.pid)
            record("memory", f"peak RSS {name}", mb, "MB", target="< 150 MB", met=mb < 150)
    finally:
        if stack is not None:
            stack.stop_all()
        infra.close()


if __name__ == "__main__":
    main()
