"""Benchmark (not a test): what the console adds on top of the APIs it calls, on the real
processes (every api and worker plus the console, PostgreSQL, the broker).

Sequential requests (one user at a time, the latency a person feels), each console page
next to the raw API call behind it, measured in the same run:
* officer submits the referral form (console POST -> intake POST -> 303) vs a raw
  `POST /v1/referrals` with the same body;
* provider offer inbox page vs raw `GET /v1/referrals` with the provider's token;
* supervisor dashboard page vs the two raw calls it makes (`GET /v1/stats` and the
  unmatched list).
Page and raw calls alternate, so both see the same machine load.
Target: console page p50 within 2.5x of its raw API call (one extra HTTP hop, token check,
template) and under 100 ms.
"""
from __future__ import annotations

import argparse
import re
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from benchlib import format_table, pct, record

from servicekit import demo
from servicekit.auth import mint_dev_token
from servicekit.provisioning import prepare
from servicekit.settings import SERVICE_MODULES, Settings
from servicekit.stack import base_env, start_stack
from servicekit.testing import start_infrastructure

FORM = {"need": "housing", "urgency": "routine", "subject.given_name": "Bench",
        "subject.age": "40", "location.lat": "47.61", "location.lon": "-122.33",
        "consent.share_with_provider": "no", "consent.referrer_updates": "none",
        "consent.contact_methods": "in_person", "consent.obtained_via": "verbal"}
BODY = {"need": "housing", "urgency": "routine", "subject": {"given_name": "Bench", "age": 40},
        "location": {"lat": 47.61, "lon": -122.33},
        "consent": {"share_with_provider": False, "referrer_updates": "none",
                    "contact_methods": ["in_person"], "obtained_via": "verbal"}}


def paired(n: int, page: Callable[[], requests.Response], ok: int,
           raw: list[Callable[[], requests.Response]]) -> tuple[list[float], list[float]]:
    """(page ms, raw ms) with the two interleaved, so both see the same machine load; the
    raw side makes the same API calls the page makes, one after the other."""
    print(f"  timing {n} page loads and their raw API calls ...", flush=True)
    pages, raws = [], []
    for _ in range(n):
        started = time.perf_counter()
        for call in raw:
            resp = call()
            if resp.status_code >= 300:
                raise SystemExit(f"raw call: unexpected {resp.status_code}: {resp.text[:300]}")
        raws.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        resp = page()
        pages.append((time.perf_counter() - started) * 1000)
        if resp.status_code != ok:
            raise SystemExit(f"page: unexpected {resp.status_code}: {resp.text[:300]}")
    return pages, raws


def console_session(base: str, role: str) -> tuple[requests.Session, str]:
    session = requests.Session()
    page = session.get(base + "/signin", timeout=10).text
    index = next(i for i, u in enumerate(demo.DEMO_USERS) if u[0] == role)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore
    session.post(base + "/signin/demo", data={"user": index, "csrf_token": csrf}, timeout=10)
    page = session.get(base + "/signin", timeout=10).text  # the new session's CSRF token
    return session, re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=30)
    args = parser.parse_args()
    var = Path(tempfile.mkdtemp(prefix="bench-console-"))
    infra = start_infrastructure(var)
    try:
        dbs = {s: infra.new_database(s) for s in SERVICE_MODULES}
        prepare(dbs)
        env = {**base_env(var / "var", infra.kafka, dbs), "LOG_LEVEL": "WARNING"}
        print("starting every api, worker and the console ...", flush=True)
        stack = start_stack(env, var / "logs")
        try:
            rows = run(stack.urls, Settings.from_env("cli", env), args.n)
        finally:
            stack.stop_all()
    finally:
        infra.close()
    print(format_table(rows))


def run(urls: dict[str, str], settings: Settings, n: int) -> list[dict[str, Any]]:
    console, intake = urls["console"], urls["referral-intake"]

    def bearer(role: str, sub: str, **claims: Any) -> dict[str, str]:
        return {"Authorization": "Bearer " + mint_dev_token(settings, sub=sub, role=role,
                                                            **claims)}

    officer_api = bearer("officer", "officer-ortiz", agency=demo.AGENCY)
    officer, csrf = console_session(console, "officer")
    page_post, raw_post = paired(n, lambda: officer.post(
        console + "/referrals/new", allow_redirects=False, timeout=10,
        data={**FORM, "csrf_token": csrf, "idempotency_key": str(uuid.uuid4())}), 303, [
        lambda: requests.post(intake + "/v1/referrals", json=BODY, timeout=10, headers={
            **officer_api, "Idempotency-Key": str(uuid.uuid4())})])
    provider_api = bearer("provider", "provider-harbor-staff", org=demo.DEMO_ORG_ID)
    provider, _ = console_session(console, "provider")
    page_inbox, raw_inbox = paired(n, lambda: provider.get(console + "/provider/inbox",
                                                           timeout=10), 200, [
        lambda: requests.get(intake + "/v1/referrals?limit=100", timeout=10,
                             headers=provider_api)])
    supervisor_api = bearer("supervisor", "supervisor-chen", agency=demo.AGENCY)
    supervisor, _ = console_session(console, "supervisor")
    page_dash, raw_stats = paired(n, lambda: supervisor.get(console + "/supervisor/",
                                                            timeout=10), 200, [
        lambda: requests.get(intake + "/v1/stats", timeout=10, headers=supervisor_api),
        lambda: requests.get(intake + "/v1/referrals?status=unmatched&limit=100", timeout=10,
                             headers=supervisor_api)])
    rows = []
    for name, page, raw, raw_name in (
            ("officer submits the form", page_post, raw_post, "raw POST /v1/referrals"),
            ("provider offer inbox", page_inbox, raw_inbox, "raw GET /v1/referrals"),
            ("supervisor dashboard", page_dash, raw_stats, "raw GET /v1/stats + unmatched list")):
        p50, raw50 = pct(page, 50), pct(raw, 50)
        rows.append(record("console", f"{name} p50 (n={n}, sequential)", p50, "ms",
                           baseline=f"{raw_name} p50", baseline_value=raw50,
                           target="<= 2.5x and < 100 ms", met=p50 <= 2.5 * raw50 and p50 < 100))
        rows.append(record("console", f"{name} p95", pct(page, 95), "ms",
                           baseline=f"{raw_name} p95", baseline_value=pct(raw, 95)))
    return rows


if __name__ == "__main__":
    main()
