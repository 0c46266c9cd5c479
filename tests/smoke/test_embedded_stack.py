"""Smoke test of the embedded default: `referrals up` on SQLite with its own broker."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from servicekit import demo
from servicekit.broker import free_port
from servicekit.testing import wait_for

pytestmark = pytest.mark.e2e


def _env(var: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.endswith("_DATABASE_URL") and k != "KAFKA_BOOTSTRAP_SERVERS"}
    env.update(VAR_DIR=str(var), EMBEDDED_KAFKA_PORT=str(free_port()), PYTHONUNBUFFERED="1")
    for prefix in ("INTAKE", "REGISTRY", "MATCHING", "NOTIFICATIONS"):
        env[f"{prefix}_PORT"] = str(free_port())
    return env


def _cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "servicekit.cli", *args], env=env, check=True,
                          capture_output=True, text=True, timeout=60).stdout.strip()


def test_make_up_stack_routes_a_referral_on_sqlite_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = _env(tmp_path / "var")
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115
    up = subprocess.Popen([sys.executable, "-m", "servicekit.cli", "up"], env=env, stdout=log,
                          stderr=subprocess.STDOUT, start_new_session=True)
    intake = f"http://127.0.0.1:{env['INTAKE_PORT']}"
    try:
        def ready() -> bool:
            assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            try:
                return requests.get(intake + "/readyz", timeout=1).ok
            except requests.RequestException:
                return False

        wait_for(ready, timeout=90, interval=0.3, message="the embedded stack")
        assert sorted(p.name for p in (tmp_path / "var").glob("*.db")) == [
            "matching.db", "notifications.db", "provider-registry.db", "referral-intake.db"]
        officer = _cli(env, "token", "--role", "officer", "--sub", "officer-smoke",
                       "--agency", demo.AGENCY)
        provider = _cli(env, "token", "--role", "provider", "--sub", "staff-smoke",
                        "--org", demo.DEMO_ORG_ID)
        body: dict[str, Any] = {
            "need": "housing", "urgency": "emergency",
            "subject": {"given_name": "Smoke", "age": 50},
            "location": {"lat": 47.6062, "lon": -122.3321},
            "consent": {"share_with_provider": False, "referrer_updates": "none",
                        "contact_methods": [], "obtained_via": "verbal"}}
        started = time.monotonic()
        resp = requests.post(intake + "/v1/referrals", json=body, timeout=10,
                             headers={"Authorization": f"Bearer {officer}"})
        assert resp.status_code == 201, resp.text
        rid = resp.json()["id"]

        def offered() -> bool:
            got = requests.get(f"{intake}/v1/referrals/{rid}", timeout=5,
                               headers={"Authorization": f"Bearer {provider}"})
            return got.status_code == 200 and got.json()["status"] == "offered"

        try:
            wait_for(offered, timeout=60, message="the offer on the embedded stack")
        except AssertionError as exc:
            tail = [line for line in (tmp_path / "up.log").read_text().splitlines()
                    if '"level": "info"' not in line][-60:]
            raise AssertionError(f"{exc}\n" + "\n".join(tail)) from None
        print(f"embedded stack: submit -> offer visible in {time.monotonic() - started:.2f}s")
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=60)
        log.close()
    assert code in (0, -signal.SIGTERM, 128 + signal.SIGTERM), code
    with pytest.raises(requests.ConnectionError):
        requests.get(intake + "/healthz", timeout=2)  # every child was stopped
