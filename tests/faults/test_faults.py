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

from servicekit import events
from servicekit.provisioning import prepare
from servicekit.settings import SERVICE_MODULES
from servicekit.stack import Stack, base_env, start_stack
from servicekit.testing import Infrastructure, wait_for

from .harness import Audit, Load, during, submit

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
    env.update(LOG_LEVEL="WARNING", WEB_THREADS="8")
    stack = start_stack(env, var / "logs", timeout=180)
    audit = Audit(stack, dbs, stack_kafka)
    yield stack, audit
    audit.close()
    stack.stop_all()


COLUMNS = ["fault", "acked", "exactly one outcome", "missing", "several", "offer notes != 1",
           "duplicates", "client retries", "replayed", "settle s", "seq violations",
           "dead letters"]


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
