"""Benchmark (not a test): the whole pipeline on real processes.

* submit -> provider notified (the provider organization's `offer_made` notification stored)
  p50/p95/p99 at fixed open-loop arrival rates, next to the raw kafka-python produce -> consume
  round trip through the same broker measured in the same run;
* the highest sustainable rate: the highest offered rate at which every acknowledged referral
  is notified, delivery keeps up with arrivals (>= 95 %) and the backlog drains within 5 s;
* peak resident memory (VmHWM) of every process (an api counts its gunicorn workers).

Latency is measured from the client's clock just before the POST to the notification's
`created_at` written by the notifications worker on the same machine (same clock), so the
measurement itself puts no polling load on the system.
"""
from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import requests
import sqlalchemy as sa
from benchlib import pct, process_tree_peak_rss_mb, raw_round_trips, record

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
    earlier answers). Returns {referral id: submit wall time}, failures, achieved send rate."""
    n = int(rate * seconds)
    sent: dict[str, float] = {}
    failures = 0
    lock = threading.Lock()
    local = threading.local()

    def one(at: float) -> None:
        nonlocal failures
        delay = at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        wall = time.time()
        try:
            resp = session.post(f"{intake}/v1/referrals", json=BODY, timeout=30,
                                headers={**headers, "Idempotency-Key": str(uuid.uuid4())})
            ok = resp.status_code == 201
        except requests.RequestException:
            ok = False
        with lock:
            if ok:
                sent[resp.json()["id"]] = wall
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
        sent, failures, achieved = offered_run(intake, officer, args.fixed_rate,
                                               args.fixed_seconds)
        got, _drain = wait_notified(engine, sent, timeout=120)
        lat = [(got[r] - t) * 1000 for r, t in sent.items() if r in got]
        print(f"fixed rate {args.fixed_rate}/s: sent {len(sent)} ok, {failures} failed, "
              f"achieved {achieved:.1f}/s, notified {len(got)}")
        for p in (50, 95, 99):
            target = "p95 < 250 ms" if p == 95 else None
            record("pipeline", f"submit -> provider notified p{p} at {args.fixed_rate:g}/s",
                   pct(lat, p), "ms", baseline="raw produce->consume", baseline_value=pct(raw, p),
                   target=target, met=(pct(lat, p) < 250) if p == 95 else None,
                   n=len(lat), lost=len(sent) - len(got), failures=failures)

        best = 0.0
        for rate in [float(r) for r in args.rates.split(",")]:
            sent, failures, achieved = offered_run(intake, officer, rate, args.step_seconds,
                                                   clients=32)
            got, drain = wait_notified(engine, sent, timeout=60)
            lat = [(got[r] - t) * 1000 for r, t in sent.items() if r in got]
            window = max(got.values(), default=0) - min(sent.values(), default=0)
            delivered = len(got) / window if window > 0 else 0.0
            ok = (failures == 0 and len(got) == len(sent) and achieved >= 0.95 * rate
                  and delivered >= 0.95 * rate and drain <= 5.0)
            print(f"offered {rate:g}/s: achieved send {achieved:.1f}/s, delivered "
                  f"{delivered:.1f}/s, failures {failures}, drain {drain:.1f}s, "
                  f"p95 {pct(lat, 95):.0f} ms -> {'sustained' if ok else 'NOT sustained'}")
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
