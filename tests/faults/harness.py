"""Load, settle and account for referrals flowing through the real stack under a fault.

``submit`` posts referrals from several client threads, each retrying with the same
Idempotency-Key until it is acknowledged (2xx), like a phone with a flaky connection.
``settle`` waits for every outbox to drain and every consumer group to catch up.
``Audit`` then checks, from the services' own databases and the topics themselves, the
invariants the issue names, and returns the figures the suite prints per fault.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from sqlalchemy import create_engine, text

from servicekit import demo, events
from servicekit.auth import mint_dev_token
from servicekit.settings import Settings
from servicekit.stack import Stack
from servicekit.testing import iter_topic

REFERRAL = {"need": "housing", "urgency": "urgent",
            "subject": {"given_name": "Load", "age": 30},
            "location": {"lat": 47.6097, "lon": -122.3331},
            "consent": {"share_with_provider": True, "referrer_updates": "milestones",
                        "contact_methods": ["phone"], "obtained_via": "verbal"}}


@dataclass
class Load:
    acked: dict[str, str] = field(default_factory=dict)  # idempotency key -> referral id
    replayed: int = 0  # acknowledgements that were replays of an earlier commit
    retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def done(self) -> int:
        return len(self.acked)


def officer_headers(stack: Stack) -> dict[str, str]:
    settings = Settings.from_env("cli", stack.env)
    token = mint_dev_token(settings, sub="officer-load", role="officer", agency=demo.AGENCY)
    return {"Authorization": f"Bearer {token}"}


def submit(stack: Stack, n: int, load: Load, *, threads: int = 6,
           give_up_s: float = 180) -> None:
    """Submit ``n`` referrals; every one is retried (same key) until acknowledged."""
    headers = officer_headers(stack)

    def one(_i: int) -> None:
        key = str(uuid.uuid4())
        deadline = time.monotonic() + give_up_s
        with requests.Session() as http:
            while True:
                url = stack.urls["referral-intake"] + "/v1/referrals"
                try:
                    resp = http.post(url, json=REFERRAL, timeout=10,
                                     headers={**headers, "Idempotency-Key": key})
                    if resp.status_code == 201:
                        with load.lock:
                            load.acked[key] = resp.json()["id"]
                            load.replayed += resp.headers.get("Idempotent-Replayed") == "true"
                        return
                    if resp.status_code < 500 and resp.status_code not in (409, 429):
                        raise AssertionError(f"refused: {resp.status_code} {resp.text[:300]}")
                except requests.RequestException:
                    pass
                with load.lock:
                    load.retries += 1
                if time.monotonic() > deadline:
                    raise AssertionError("a referral was never acknowledged")
                time.sleep(0.2)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(n)))


def during(load: Load, at: int, action: Callable[[], None]) -> threading.Thread:
    """Run ``action`` once ``at`` referrals are acknowledged (in a thread)."""
    def run() -> None:
        while load.done < at:
            time.sleep(0.05)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _group_id(group: Any) -> str:
    if isinstance(group, dict):
        return str(group.get("group_id") or group.get("group"))
    if isinstance(group, tuple):
        return str(group[0])
    return str(getattr(group, "group_id", group))


class Audit:
    """Reads the four databases and the broker."""

    def __init__(self, stack: Stack, dbs: dict[str, str], kafka: str):
        self.stack, self.kafka = stack, kafka
        self.engines = {s: create_engine(url, pool_size=1, pool_pre_ping=True)
                        for s, url in dbs.items()}

    def close(self) -> None:
        for engine in self.engines.values():
            engine.dispose()

    def rows(self, service: str, sql: str, **params: Any) -> list[Any]:
        with self.engines[service].connect() as conn:
            return list(conn.execute(text(sql), params))

    def backlog(self) -> int:
        return sum(int(self.rows(s, "SELECT count(*) FROM outbox WHERE sent_at IS NULL")[0][0])
                   for s in self.engines)

    def lag(self) -> int:
        """Messages not yet committed by any consumer group, over every partition of every
        topic the group has committed on (from the broker, not from the services)."""
        admin = KafkaAdminClient(bootstrap_servers=self.kafka)
        consumer = KafkaConsumer(bootstrap_servers=self.kafka)
        try:
            total = 0
            for group in {_group_id(g) for g in admin.list_groups()}:
                committed = admin.list_group_offsets({group: None}).get(group) or {}
                topics = {tp.topic for tp in committed}
                parts = [TopicPartition(t, p) for t in topics
                         for p in consumer.partitions_for_topic(t) or ()]
                ends = consumer.end_offsets(parts)
                for tp in parts:
                    meta = committed.get(tp)
                    total += max(0, ends[tp] - (meta.offset if meta and meta.offset >= 0 else 0))
            return total
        finally:
            consumer.close()
            admin.close()

    def settle(self, timeout: float = 60) -> float:
        """Seconds until outbox backlog and consumer lag are both zero (raises after
        ``timeout``)."""
        started = time.monotonic()
        while True:
            backlog, lag = self.backlog(), self.lag()
            if backlog == 0 and lag == 0:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(f"not settled in {timeout}s: backlog {backlog}, lag {lag}")
            time.sleep(0.5)

    def outcomes(self, referral_ids: set[str]) -> tuple[int, int, int]:
        """(referrals with exactly one first routing outcome, with none, with several)."""
        counts: dict[str, int] = defaultdict(int)
        for rid, n in self.rows("matching", "SELECT referral_id, count(*) FROM decisions "
                                "WHERE attempt = 1 GROUP BY referral_id"):
            counts[str(rid)] = int(n)
        one = sum(1 for r in referral_ids if counts.get(r) == 1)
        none = sum(1 for r in referral_ids if counts.get(r, 0) == 0)
        return one, none, len(referral_ids) - one - none

    def duplicate_effects(self) -> dict[str, int]:
        dup = "SELECT count(*) FROM ({}) d"
        return {
            "intake referrals per key": int(self.rows("referral-intake", dup.format(
                "SELECT resource_id FROM idempotency_key GROUP BY resource_id "
                "HAVING count(*) > 1"))[0][0]),
            "decisions": int(self.rows("matching", dup.format(
                "SELECT referral_id, attempt FROM decisions GROUP BY referral_id, attempt "
                "HAVING count(*) > 1"))[0][0]),
            "notifications": int(self.rows("notifications", dup.format(
                "SELECT recipient_kind, recipient_id, event_id, channel, kind "
                "FROM notifications GROUP BY recipient_kind, recipient_id, event_id, channel, "
                "kind HAVING count(*) > 1"))[0][0]),
        }

    def referral_count(self) -> int:
        return int(self.rows("referral-intake", "SELECT count(*) FROM referrals")[0][0])

    def warm_up(self, stack: Stack, n: int = 5, timeout: float = 180) -> None:
        """Send ``n`` referrals and wait until each has its routing outcome and, if offered,
        the provider's notification: every worker's consumer has then joined its group and
        committed. Until a group has committed, ``lag`` cannot count it, so a case started
        on a fresh stack could look settled with a worker still joining; and a worker
        killed while joining stays in the rebalance until the broker's rebalance timeout
        (max.poll.interval.ms, 5 minutes) ends it."""
        load = Load()
        submit(stack, n, load)
        ids = set(load.acked.values())

        def through() -> bool:
            one, _, _ = self.outcomes(ids)
            return one == n and self.offers_without_one_notification(ids) == 0 \
                and self.backlog() == 0

        deadline = time.monotonic() + timeout
        while not through():
            if time.monotonic() > deadline:
                raise AssertionError(f"warm-up: {n} referrals not routed and notified in "
                                     f"{timeout}s")
            time.sleep(0.5)

    def offers_without_one_notification(self, referral_ids: set[str]) -> int:
        """Referrals offered to a provider without exactly one in-app offer notification."""
        offered = {str(r[0]) for r in self.rows(
            "referral-intake", "SELECT DISTINCT referral_id FROM offers WHERE attempt = 1")}
        per_channel: dict[str, list[int]] = defaultdict(list)
        for rid, n in self.rows("notifications", "SELECT referral_id, count(*) FROM "
                                "notifications WHERE kind = 'offer_made' AND recipient_kind = "
                                "'org' GROUP BY referral_id, channel"):
            per_channel[str(rid)].append(int(n))
        return sum(1 for r in offered & referral_ids
                   if not per_channel.get(r) or any(n != 1 for n in per_channel[r]))

    def sequence_violations(self) -> int:
        """Per key, in partition order: sequences never go back, and a repeated sequence is
        only ever a redelivery of the same event."""
        last: dict[bytes, tuple[int, str]] = {}
        bad = 0
        for record in iter_topic(self.kafka, events.REFERRAL_EVENTS, timeout_s=3):
            try:
                env = events.decode(record.value)
            except events.PoisonMessage:
                continue  # injected poison, accounted for by the dead-letter count
            prev = last.get(record.key)
            if prev is not None and (env.sequence < prev[0] or (
                    env.sequence == prev[0] and env.id != prev[1])):
                bad += 1
            last[record.key] = (env.sequence, env.id)
        return bad

    def dead_letters(self, key_prefix: bytes) -> dict[str, int]:
        """Dead letters whose key starts with ``key_prefix``, per consumer group."""
        per_group: dict[str, int] = defaultdict(int)
        for topic in events.ALL_TOPICS:
            for record in iter_topic(self.kafka, events.dlq_topic(topic), timeout_s=2):
                if (record.key or b"").startswith(key_prefix):
                    headers = dict(record.headers or [])
                    per_group[headers.get("dlq.consumer_group", b"?").decode()] += 1
        return dict(per_group)

    def dead_letter_total(self) -> int:
        """Every dead letter on every dead-letter topic."""
        return sum(1 for topic in events.ALL_TOPICS
                   for _ in iter_topic(self.kafka, events.dlq_topic(topic), timeout_s=2))
