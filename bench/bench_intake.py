"""Benchmark (not a test): `POST /v1/referrals` under gunicorn with 16 concurrent clients.

The referral-intake api runs as in production (`python -m referral_intake api`, gunicorn
gthread workers) on PostgreSQL. Each POST validates the body, encrypts the subject's PII
under a fresh data key, appends to the audit chain, writes the referral, consent, timeline,
outbox event and Idempotency-Key row in one transaction. The floor, measured on the same
server in the same run: `GET /v1/me`, an authenticated request that verifies the token and
touches no database. Throughput over a fixed window after a warm-up; latency per request.
Target: >= 300 referrals/s with p99 < 100 ms on this machine (2 cores, clients included).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import requests
from benchlib import format_table, pct, record

from referral_intake import bootstrap
from servicekit.auth import mint_dev_token
from servicekit.db import run_migrations
from servicekit.settings import Settings
from servicekit.testing import start_infrastructure

BODY = {"need": "housing", "urgency": "urgent",
        "subject": {"given_name": "Bench", "family_name": "Resident", "age": 34,
                    "phone": "+15550100000", "email": "bench@example.org"},
        "location": {"lat": 47.61, "lon": -122.33}, "notes": "bench note",
        "consent": {"share_with_provider": True, "referrer_updates": "milestones",
                    "contact_methods": ["phone"], "obtained_via": "verbal"}}


def _load(url: str, headers: dict[str, str], method: str, clients: int, seconds: float,
          warmup: float) -> tuple[float, list[float], int]:
    """(requests/s in the window, latencies in ms, errors) with ``clients`` threads."""
    stop_at = time.perf_counter() + warmup + seconds
    window_start = time.perf_counter() + warmup
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients

    def client(i: int) -> None:
        session = requests.Session()
        while (now := time.perf_counter()) < stop_at:
            h = dict(headers)
            if method == "POST":
                h["Idempotency-Key"] = uuid.uuid4().hex
                resp = session.post(url, json=BODY, headers=h, timeout=10)
            else:
                resp = session.get(url, headers=h, timeout=10)
            if now >= window_start:
                lat[i].append((time.perf_counter() - now) * 1000)
                if resp.status_code >= 300:
                    errors[i] += 1
        session.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    samples = [x for per in lat for x in per]
    return len(samples) / seconds, samples, sum(errors)


def _wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the api exited during start-up")
        try:
            if requests.get(base + "/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or too busy starting
            pass
        time.sleep(0.2)
    raise SystemExit("the api did not become healthy")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--workers", default=os.environ.get("WEB_CONCURRENCY", "2"))
    parser.add_argument("--threads", default=os.environ.get("WEB_THREADS", "8"))
    args = parser.parse_args()
    var = Path(tempfile.mkdtemp(prefix="bench-intake-"))
    infra = start_infrastructure(var)
    proc: subprocess.Popen[bytes] | None = None
    try:
        env: dict[str, Any] = {
            **os.environ, "VAR_DIR": str(var / "var"), "KAFKA_BOOTSTRAP_SERVERS": infra.kafka,
            "INTAKE_DATABASE_URL": infra.new_database("referral-intake"), "INTAKE_PORT": "18991",
            "WEB_CONCURRENCY": str(args.workers), "WEB_THREADS": str(args.threads),
            "LOG_LEVEL": "WARNING"}
        settings = Settings.from_env("referral-intake", env)
        run_migrations(settings.database_url, bootstrap.MIGRATIONS)
        token = mint_dev_token(settings, sub="bench-officer", role="officer", agency="bench-pd")
        proc = subprocess.Popen([sys.executable, "-m", "referral_intake", "api"], env=env)
        base = f"http://127.0.0.1:{settings.port}"
        _wait_healthy(base, proc)
        auth = {"Authorization": f"Bearer {token}"}
        floor, floor_lat, floor_err = _load(base + "/v1/me", auth, "GET", args.clients,
                                            args.seconds / 2, args.warmup)
        rate, lat, errors = _load(base + "/v1/referrals", auth, "POST", args.clients,
                                  args.seconds, args.warmup)
        if errors or floor_err:
            raise SystemExit(f"{errors} POST and {floor_err} GET requests failed")
        admin = mint_dev_token(settings, sub="bench-admin", role="admin")
        chain = requests.post(base + "/v1/audit/verify", timeout=120,
                              headers={"Authorization": f"Bearer {admin}"}).json()
        if not chain["ok"]:  # concurrent appends must still form intact chains
            raise SystemExit(f"audit chain broken after the load: {chain}")
        p50, p99 = pct(lat, 50), pct(lat, 99)
        label = f"{args.clients} clients, gunicorn {args.workers}x{args.threads}"
        rows = [
            record("intake", f"POST /v1/referrals ({label})", rate, "referrals/s",
                   baseline="GET /v1/me (auth only)", baseline_value=floor,
                   target=">= 300/s", met=rate >= 300),
            record("intake", "POST /v1/referrals p50", p50, "ms",
                   baseline="GET /v1/me p50", baseline_value=pct(floor_lat, 50)),
            record("intake", "POST /v1/referrals p99", p99, "ms",
                   baseline="GET /v1/me p99", baseline_value=pct(floor_lat, 99),
                   target="< 100 ms", met=p99 < 100),
        ]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=20)
        infra.close()
    print(format_table(rows))


if __name__ == "__main__":
    main()
