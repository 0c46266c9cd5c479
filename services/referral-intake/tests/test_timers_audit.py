"""Timers (offer expiry, first contact), the hash-chained audit log and key rotation."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from intake_testkit import CANARY, Intake

from referral_intake import audit, timers, vault
from servicekit import crypto, events

pytestmark = pytest.mark.integration
LATER = datetime.now(UTC) + timedelta(days=30)


def test_expired_offer_is_rerouted_and_breaches_once(intake: Intake) -> None:
    rid, service, org = intake.offered()
    assert timers.expire_offers(intake.db, intake.ctx, datetime.now(UTC)) == 0
    assert timers.expire_offers(intake.db, intake.ctx, LATER) == 1
    assert timers.expire_offers(intake.db, intake.ctx, LATER) == 0
    last = intake.events(events.REFERRAL_STATUS_CHANGED)[-1].data
    assert (last["from_status"], last["to_status"], last["reason_code"]) == (
        "offered", "submitted", "expired")
    assert last["offer"]["service_id"] == service and last["offer"]["status"] == "expired"
    [breach] = intake.events(events.REFERRAL_SLA_BREACHED)
    assert breach.data["sla"] == "offer_response" and breach.data["organization_id"] == org
    late = intake.post(f"/v1/referrals/{rid}/accept", intake.provider(org))
    assert late.status_code == 409 and late.get_json()["current_status"] == "submitted"


def test_first_contact_deadline_breach_is_emitted_once(intake: Intake) -> None:
    rid, _, org = intake.offered()
    intake.post(f"/v1/referrals/{rid}/accept", intake.provider(org))
    assert timers.first_contact_breaches(intake.db, intake.ctx,
                                         datetime.now(UTC)) == 0
    assert timers.first_contact_breaches(intake.db, intake.ctx, LATER) == 1
    assert timers.first_contact_breaches(intake.db, intake.ctx, LATER) == 0
    [breach] = intake.events(events.REFERRAL_SLA_BREACHED)
    assert breach.data["sla"] == "first_contact" and breach.subject == rid


def test_contact_recorded_in_time_means_no_breach(intake: Intake) -> None:
    rid, _, org = intake.offered()
    intake.post(f"/v1/referrals/{rid}/accept", intake.provider(org))
    intake.post(f"/v1/referrals/{rid}/progress", intake.provider(org), {"status": "in_progress"})
    assert timers.first_contact_breaches(intake.db, intake.ctx, LATER) == 0


def _verify(intake: Intake) -> audit.Verdict:
    with intake.db.uow() as uow:
        return audit.verify(uow.session, intake.ctx.audit_key)


def _audited_activity(intake: Intake) -> str:
    rid, _, org = intake.offered()
    for _ in range(4):
        intake.client.get(f"/v1/referrals/{rid}", headers=intake.provider(org))
    return rid


def test_every_pii_read_and_write_is_audited_and_the_chain_verifies(intake: Intake) -> None:
    rid = _audited_activity(intake)
    rows = intake.sql("SELECT action, role, purpose, fields FROM audit_log ORDER BY seq")
    assert [r[0] for r in rows] == ["write", "read", "read", "read", "read"]
    assert rows[0][1] == "officer" and {"phone", "notes"} <= set(rows[0][3])
    assert rows[1][1] == "provider" and "phone" in rows[1][3]
    assert CANARY["phone"] not in str(rows)
    assert _verify(intake).ok and _verify(intake).rows == 5
    resp = intake.client.post("/v1/audit/verify", headers=intake.admin())
    assert resp.get_json() == {"ok": True, "rows": 5, "chain": None, "first_bad_seq": None,
                               "problem": None}
    page = intake.client.get(f"/v1/audit?referral_id={rid}", headers=intake.admin()).get_json()
    assert page["total"] == 5
    assert intake.client.get("/v1/audit", headers=intake.supervisor()).status_code == 403


def test_the_database_refuses_updates_to_the_audit_log(intake: Intake) -> None:
    _audited_activity(intake)
    with pytest.raises(Exception, match="append-only"):
        intake.sql("UPDATE audit_log SET actor = 'x' WHERE seq = 1")


def _tamper(intake: Intake, statement: str) -> None:
    """As a superuser who bypasses the append-only trigger."""
    with intake.db.engine.begin() as c:
        from sqlalchemy import text

        c.execute(text("SET LOCAL session_replication_role = replica"))
        for part in statement.split(";"):
            c.execute(text(part))


@pytest.mark.parametrize("statement, problem", [
    ("UPDATE audit_log SET purpose = 'innocent' WHERE seq = 3", "row modified"),
    ("DELETE FROM audit_log WHERE seq = 2", "row missing"),
    ("DELETE FROM audit_log WHERE seq = 5", "chain head"),
    ("UPDATE audit_log SET chain = 99 WHERE seq = 5", "chain head"),
    # reorder: swap the contents of rows 3 and 4 (each keeps its own hash)
    (("UPDATE audit_log SET seq = 1000 WHERE seq = 3; UPDATE audit_log SET seq = 3 WHERE seq = 4;"
      " UPDATE audit_log SET seq = 4 WHERE seq = 1000"), "link broken"),
])
def test_tampering_with_the_audit_table_is_detected(intake: Intake, statement: str,
                                                   problem: str) -> None:
    _audited_activity(intake)
    _tamper(intake, statement)
    verdict = _verify(intake)
    assert not verdict.ok and problem in str(verdict.problem)
    resp = intake.client.post("/v1/audit/verify", headers=intake.admin()).get_json()
    assert resp["ok"] is False


def _cli_env(intake: Intake) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTAKE_")}
    env.update({k: v for k, v in intake.settings.values.items()
                if k.startswith("INTAKE_") or k in ("VAR_DIR", "PII_KEYRING_FILE",
                                                   "PSEUDONYM_KEY_FILE", "DEV_KEYS")})
    env["VAR_DIR"] = str(intake.settings.var_dir)
    return env


def test_audit_verify_command_exits_nonzero_after_tampering(intake: Intake) -> None:
    _audited_activity(intake)
    cmd = [sys.executable, "-m", "servicekit.cli", "audit", "verify"]
    ok = subprocess.run(cmd, env=_cli_env(intake), capture_output=True, text=True, timeout=60,
                         check=False)
    assert ok.returncode == 0, ok.stderr
    assert "intact: 5 entries" in ok.stdout
    _tamper(intake, "UPDATE audit_log SET actor = 'someone-else' WHERE seq = 1")
    bad = subprocess.run(cmd, env=_cli_env(intake), capture_output=True, text=True, timeout=60,
                         check=False)
    assert bad.returncode == 1 and "seq 1" in bad.stderr


def test_keys_rotate_rewraps_every_data_key_while_serving(intake: Intake) -> None:
    rid, _, org = intake.offered()
    intake.submit()
    old = intake.ctx.keysource.current().active
    cmd = [sys.executable, "-m", "servicekit.cli", "keys", "rotate"]
    out = subprocess.run(cmd, env=_cli_env(intake), capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert "re-wrapped 2 data keys" in out.stdout
    ring = crypto.Keyring.from_json(Path(intake.settings.get("PII_KEYRING_FILE")).read_text())
    assert ring.active != old and old in ring.kids
    wrapped = [r[0] for r in intake.sql("SELECT wrapped_key FROM subjects")]
    assert all(crypto.wrapped_key_id(w) == ring.active for w in wrapped)
    # the running app (started with the old ring) still reads the re-wrapped keys
    view = intake.client.get(f"/v1/referrals/{rid}", headers=intake.provider(org)).get_json()
    assert view["contact"]["phone"] == CANARY["phone"]
    assert intake.ctx.keysource.current().active == ring.active
    assert _verify(intake).ok
    assert vault.rotate(intake.db, intake.ctx.keysource, intake.ctx.audit_key) == 0


def test_the_worker_timer_component_expires_offers_until_stopped(intake: Intake) -> None:
    import threading

    rid, _, _ = intake.offered()
    stop = threading.Event()
    loop = timers.timer_loop(intake.db, intake.ctx, 0.05, clock=lambda: LATER)
    worker = threading.Thread(target=loop, args=(stop,))
    worker.start()
    try:
        deadline = datetime.now(UTC) + timedelta(seconds=20)
        while intake.sql("SELECT status FROM referrals")[0][0] != "submitted":
            assert datetime.now(UTC) < deadline, "the timer never fired"
            stop.wait(0.05)
    finally:
        stop.set()
        worker.join(timeout=10)
    assert not worker.is_alive()
    assert [e.subject for e in intake.events(events.REFERRAL_SLA_BREACHED)] == [rid]
