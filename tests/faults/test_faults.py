"""Fault injection under load: the real processes (servicekit.stack), real PostgreSQL and
the run's broker, 1,000 referrals per fault, one stack shared by the cases in order.

After each fault: every acknowledged referral has exactly one first routing outcome, each
offered referral exactly one in-app offer notification, no duplicate effects, outbox
backlog and consumer lag zero within 60 s, per-referral sequences monotonic on the topic,
and (poison case) dead letters equal to the poison injected, per consumer group. A table
of these figures is printed at the end.

Runs against any broker: set KAFKA_BOOTSTRAP_SERVERS (e.g. the docker-compose Apache
Kafka) to run it on a durable broker instead of the in-memory Tansu the fixtures start.
"""
from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from kafka import KafkaProducer
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from servicekit import events
from servicekit.provisioning import prepare
from servicekit.settings import SERVICE_MODULES
from servicekit.stack import Stack, base_env, start_stack
from servicekit.testing import Infrastructure, sqlalchemy_url, wait_for

from .harness import Audit, Load, during, officer_headers, submit

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]

N = 1000
# The bound is 60 s. A shared, overloaded workstation can raise it (the figure is
# printed either way) to check the other invariants; CI runs with the default.
SETTLE_S = float(os.environ.get("FAULTS_SETTLE_S", "60"))
RESULTS: list[dict[str, Any]] = []


@pytest.fixture(scope="module")
def rig(infra: Infrastructure, stack_kafka: str, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[tuple[Stack, Audit]]:
    var = tmp_path_factory.mktemp("faults")
    dbs = {service: infra.new_database(service) for service in SERVICE_MODULES}
    prepare(dbs)
    env = base_env(var / "var", stack_kafka, dbs)
    env.update(LOG_LEVEL=os.environ.get("FAULTS_LOG_LEVEL", "WARNING"), WEB_THREADS="8")
    stack = start_stack(env, var / "logs", timeout=180)
    audit = Audit(stack, dbs, stack_kafka)
    audit.warm_up(stack)
    yield stack, audit
    audit.close()
    stack.stop_all()


COLUMNS = ["fault", "acked", "exactly one outcome", "missing", "several", "offer notes != 1",
           "duplicates", "client retries", "replayed", "settle s", "seq violations",
           "crashes", "dead letters", "revoked", "open offers from before",
           "officer notes kept", "broker"]


def table(results: list[dict[str, Any]]) -> list[str]:
    """The figures per fault, one line each (printed by this folder's conftest)."""
    widths = [max(len(c), *(len(str(r.get(c, "-"))) for r in results)) for c in COLUMNS]
    lines = [" | ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    lines += [" | ".join(str(r.get(c, "-")).ljust(w) for c, w in zip(COLUMNS, widths,
                                                                     strict=True))
              for r in results]
    return lines


def run_fault(stack: Stack, audit: Audit, name: str,
              inject: Callable[[Load], list[Any]], **extra: Any) -> dict[str, Any]:
    audit.settle(timeout=600)  # each case starts settled, so one slow case does not cascade
    load = Load()
    before = audit.referral_count()
    threads = inject(load)
    submit(stack, N, load)
    for t in threads:
        t.join(timeout=120)
    settle_s = audit.settle(timeout=SETTLE_S)
    ids = set(load.acked.values())
    one, none, several = audit.outcomes(ids)
    dups = audit.duplicate_effects()
    row = {"fault": name, "acked": len(ids), "exactly one outcome": one, "missing": none,
           "several": several, "offer notes != 1": audit.offers_without_one_notification(ids),
           "duplicates": sum(dups.values()), "client retries": load.retries,
           "replayed": load.replayed,
           "settle s": round(settle_s, 1), "seq violations": audit.sequence_violations(),
           **extra}
    RESULTS.append(row)
    print(f"\nfault figures: {row}", flush=True)
    assert len(ids) == N and audit.referral_count() - before == N, (row, "acked != stored")
    assert one == N, row
    assert row["offer notes != 1"] == 0, row
    assert dups == {k: 0 for k in dups}, dups
    assert row["seq violations"] == 0, row
    return row


def _restart(stack: Stack, name: str, sig: int = signal.SIGKILL, pause: float = 1.0) -> None:
    module, kind = _module_kind(name)
    stack.stop(name, sig)
    time.sleep(pause)
    stack.start(name, module, kind)


def _module_kind(name: str) -> tuple[str, str]:
    base, _, kind = name.rpartition("-")
    base = base.rsplit("#", 1)[0]
    return SERVICE_MODULES[base], kind


def _start_extra(stack: Stack, service: str, tag: str) -> str:
    name = f"{service}#{tag}-worker"
    stack.start(name, SERVICE_MODULES[service], "worker")
    return name


def _healthy(stack: Stack, service: str) -> None:
    def ok() -> bool:
        try:
            return requests.get(stack.urls[service] + "/healthz", timeout=1).ok
        except requests.RequestException:
            return False

    wait_for(ok, timeout=60, interval=0.2, message=f"{service} api back")


def test_poison_and_newer_event_versions_are_dead_lettered_exactly(
        rig: tuple[Stack, Audit]) -> None:
    stack, audit = rig
    prefix = f"poison-{uuid.uuid4().hex[:8]}-".encode()
    garbage = [b"\xff\xfe not json", b"{}", b'{"type": "referral.submitted"}', b"[1,2,3]",
               json.dumps({"id": str(uuid.uuid4()), "type": "referral.submitted"}).encode()]
    newer = [json.dumps({"id": str(uuid.uuid4()), "type": events.REFERRAL_SUBMITTED,
                         "version": events.CURRENT_VERSION[events.REFERRAL_SUBMITTED] + 1,
                         "source": "future-intake", "time": "2030-01-01T00:00:00Z",
                         "subject": str(uuid.uuid4()), "sequence": 1,
                         "correlation_id": "fault-suite",
                         "data": {"shape": "from the future"}}).encode() for _ in range(3)]
    injected = garbage + newer

    def inject(load: Load) -> list[Any]:
        def produce() -> None:
            producer = KafkaProducer(bootstrap_servers=audit.kafka, acks="all")
            for i, value in enumerate(injected):
                producer.send(events.REFERRAL_EVENTS, key=prefix + str(i).encode(), value=value)
            producer.flush(30)
            producer.close()

        return [during(load, 300, produce)]

    run_fault(stack, audit, "poison + newer major version", inject)
    letters = audit.dead_letters(prefix)
    RESULTS[-1]["dead letters"] = letters
    groups = {"matching", "notifications"}  # the groups that consume referral.events
    assert {g: letters.get(g, 0) for g in groups} == {g: len(injected) for g in groups}, letters
    assert set(letters) <= groups, letters


def test_two_relays_race_on_one_outbox(rig: tuple[Stack, Audit]) -> None:
    stack, audit = rig
    extra: list[str] = []

    def inject(load: Load) -> list[Any]:
        return [during(load, 100, lambda: extra.append(
                    _start_extra(stack, "referral-intake", "relay2"))),
                during(load, 850, lambda: [stack.stop(n) for n in extra])]

    run_fault(stack, audit, "two intake relays racing", inject)


def test_kill_9_workers_mid_stream_and_restart(rig: tuple[Stack, Audit]) -> None:
    stack, audit = rig

    def inject(load: Load) -> list[Any]:
        return [during(load, 250, lambda: _restart(stack, "matching-worker")),
                during(load, 500, lambda: _restart(stack, "notifications-worker")),
                during(load, 750, lambda: _restart(stack, "referral-intake-worker"))]

    run_fault(stack, audit, "kill -9 workers", inject)


def test_extra_workers_join_and_leave_forcing_rebalances(rig: tuple[Stack, Audit]) -> None:
    stack, audit = rig
    extra: list[str] = []

    def join() -> None:
        extra.extend(_start_extra(stack, s, "rebalance") for s in ("matching", "notifications"))

    def leave() -> None:
        stack.stop(extra.pop(0))  # SIGTERM: commits on revoke

    def crash() -> None:
        stack.stop(extra.pop(0), signal.SIGKILL)  # its partitions move after the session

    run_fault(stack, audit, "workers join/leave", lambda load: [
        during(load, 150, join), during(load, 500, leave), during(load, 700, crash)])


def test_kill_api_mid_request_client_retries_with_same_key(rig: tuple[Stack, Audit]) -> None:
    stack, audit = rig

    def kill_api() -> None:
        _restart(stack, "referral-intake-api", pause=0.2)
        _healthy(stack, "referral-intake")

    row = run_fault(stack, audit, "kill -9 intake api", lambda load: [
        during(load, 300, kill_api), during(load, 650, kill_api)])
    # replays are the commits whose response was lost; counted, not required (timing)
    assert row["replayed"] >= 0


# --- crashes at exact points (servicekit.failpoints), not wherever a SIGKILL lands ---

def _crash_at(stack: Stack, name: str, point: str, nth: int, crashes: list[str]
              ) -> Callable[[], None]:
    """Restart ``name`` armed to die at the ``nth`` pass of ``point``; once it has died
    there (SIGKILL by itself, logged), start it again unarmed, as a supervisor would."""
    def act() -> None:
        module, kind = _module_kind(name)
        stack.stop(name)
        stack.start(name, module, kind, extra_env={"FAILPOINTS": f"{point}={nth}"})
        proc = stack.procs[name]
        wait_for(lambda: proc.poll() is not None, timeout=120, interval=0.05,
                 message=f"{name} never reached {point}")
        stack.procs.pop(name)
        assert proc.returncode == -signal.SIGKILL, (name, proc.returncode)
        log = (stack.log_dir / f"{name}.log").read_text(errors="replace")
        assert f'"failpoint": "{point}"' in log, f"{name} died, but not at {point}"
        crashes.append(f"{name}@{point}")
        stack.start(name, module, kind)
        if kind == "api":
            _healthy(stack, name.rsplit("-", 1)[0])

    return act


def test_kill_api_after_commit_before_response(rig: tuple[Stack, Audit]) -> None:
    """The issue's first fault, hit by construction: the referral is committed, the
    response never leaves; the client's retry with the same key must get the original."""
    stack, audit = rig
    crashes: list[str] = []
    api = "referral-intake-api"
    row = run_fault(stack, audit, "api dies after commit, before response", lambda load: [
        during(load, 200, _crash_at(stack, api, "api.before_response", 25, crashes)),
        during(load, 600, _crash_at(stack, api, "api.before_response", 25, crashes))])
    row["crashes"] = len(crashes)
    assert len(crashes) == 2, crashes
    # each crash lost the response of a committed referral: its retry is a replay
    assert row["replayed"] >= len(crashes), row


def test_kill_relay_after_send_before_mark(rig: tuple[Stack, Audit]) -> None:
    """Published but not marked sent: the rows go out again; consumers' inboxes absorb it."""
    stack, audit = rig
    crashes: list[str] = []
    row = run_fault(stack, audit, "relay dies after send, before mark", lambda load: [
        # the nth relay round that sent something: a relay round sends everything pending
        # (up to its batch), so on a quick machine the rest of the load takes only a few
        # rounds; a CI run waited in vain for intake's 20th
        during(load, 150, _crash_at(stack, "referral-intake-worker", "outbox.after_send", 3,
                                    crashes)),
        during(load, 450, _crash_at(stack, "matching-worker", "outbox.after_send", 3,
                                    crashes))])
    row["crashes"] = len(crashes)
    assert len(crashes) == 2, crashes


@pytest.mark.parametrize("point", ["consumer.before_db_commit", "consumer.after_db_commit"])
def test_kill_consumers_around_their_db_commit(rig: tuple[Stack, Audit], point: str) -> None:
    """Before the commit the batch rolls back and is redelivered; after it, the offsets were
    not committed and the redelivered events find themselves in the inbox."""
    stack, audit = rig
    crashes: list[str] = []
    row = run_fault(stack, audit, f"consumers die {point.split('.')[1].replace('_', ' ')}",
                    lambda load: [
        during(load, 100, _crash_at(stack, "matching-worker", point, 40, crashes)),
        during(load, 300, _crash_at(stack, "notifications-worker", point, 40, crashes)),
        during(load, 500, _crash_at(stack, "referral-intake-worker", point, 40, crashes))])
    row["crashes"] = len(crashes)
    assert len(crashes) == 3, crashes


def _postgres_outage(infra: Infrastructure, database_urls: list[str], seconds: float
                     ) -> Callable[[], None]:
    """Every connection of the stack's databases is killed mid-transaction and new ones are
    refused for ``seconds``, then the databases come back. From the services this is a
    PostgreSQL restart; other users of the same server (other tests) are not disturbed."""
    names = [make_url(u).database for u in database_urls]

    def act() -> None:
        engine = create_engine(sqlalchemy_url(infra.pg_admin_url), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                for name in names:
                    conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                killed = conn.execute(text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = ANY(:names) AND pid <> pg_backend_pid()"),
                    {"names": names}).scalar_one()
                assert killed > 0, "the outage found no connection to kill"
                time.sleep(seconds)
                for name in names:
                    conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        finally:
            engine.dispose()

    return act


def test_postgres_goes_away_during_writes(rig: tuple[Stack, Audit], infra: Infrastructure
                                          ) -> None:
    stack, audit = rig
    urls = [e.url.render_as_string(hide_password=False) for e in audit.engines.values()]
    letters_before = audit.dead_letter_total()
    row = run_fault(stack, audit, "PostgreSQL down 5 s (twice)", lambda load: [
        during(load, 250, _postgres_outage(infra, urls, 5)),
        during(load, 650, _postgres_outage(infra, urls, 5))])
    # an outage is no fault of any message: nothing may be dead-lettered for it
    row["dead letters"] = audit.dead_letter_total() - letters_before
    assert row["dead letters"] == 0, row


def test_broker_goes_away_during_production(rig: tuple[Stack, Audit],
                                           broker_outage: Callable[[float], str]) -> None:
    """The broker stops answering while referrals are being submitted and routed: the apis
    keep accepting (they write only to PostgreSQL), relays keep their rows until the broker
    acknowledges them, consumers resume from their committed offsets."""
    stack, audit = rig
    how: list[str] = []
    letters_before = audit.dead_letter_total()
    def twice(load: Load) -> list[Any]:
        def act() -> None:  # one after the other: overlapping outages would shorten both
            how.append(broker_outage(8))
            wait_for(lambda: load.done >= 650, timeout=300, message="650 acknowledged")
            how.append(broker_outage(8))
        return [during(load, 250, act)]

    row = run_fault(stack, audit, "broker away 8 s (twice)", twice)
    row["broker"] = how[0] if how else "-"
    assert len(how) == 2, how
    row["dead letters"] = audit.dead_letter_total() - letters_before
    assert row["dead letters"] == 0, row


def test_consent_revoked_while_offers_are_in_flight(rig: tuple[Stack, Audit]) -> None:
    """Residents withdraw sharing and referrer updates while their referrals are being
    routed: every open offer made before the change is withdrawn, and the officer keeps no
    notification about those referrals, whatever arrived before or after the change."""
    stack, audit = rig
    revoked: list[str] = []
    headers = officer_headers(stack)
    body = {"share_with_provider": False, "referrer_updates": "none", "contact_methods": [],
            "obtained_via": "verbal"}

    def revoke(load: Load) -> Callable[[], None]:
        def act() -> None:
            with requests.Session() as http:
                for rid in list(load.acked.values())[-150:]:
                    url = f"{stack.urls['referral-intake']}/v1/referrals/{rid}/consent"
                    resp = http.put(url, json=body, headers=headers, timeout=10)
                    assert resp.status_code == 200, (resp.status_code, resp.text[:300])
                    revoked.append(rid)
        return act

    row = run_fault(stack, audit, "consent revoked in flight", lambda load: [
        during(load, 300, revoke(load)), during(load, 700, revoke(load))])
    ids = sorted(set(revoked))
    still_open = audit.rows("referral-intake", """
        SELECT count(*) FROM offers o JOIN (
            SELECT referral_id, max(captured_at) AS at FROM consents
            WHERE NOT share_with_provider GROUP BY referral_id) c USING (referral_id)
        WHERE o.status = 'open' AND o.created_at < c.at AND o.referral_id = ANY(:ids)""",
        ids=ids)[0][0]
    officer_notes = audit.rows("notifications", """
        SELECT count(*) FROM notifications WHERE recipient_kind = 'user'
        AND referral_id = ANY(:ids)""", ids=ids)[0][0]
    row.update({"revoked": len(ids), "open offers from before": still_open,
                "officer notes kept": officer_notes})
    assert len(ids) == 300, len(ids)
    assert still_open == 0 and officer_notes == 0, row
