"""Load-independent cost of referral-intake's hot paths (not a `make bench` timing bench):
SQL statements (SQLAlchemy ``before_cursor_execute``), commits, PostgreSQL round trips
(psycopg cursor executes + BEGIN/COMMIT/ROLLBACK, pings included) and CPU ms
(``time.process_time``, best of 3 rounds) per unit, for `POST /v1/referrals` through Flask's
test client, a replayed POST, the routing.proposed consumer through ``ConsumerRunner``
(batched like a poll) and the outbox relay (with an instant-ack producer, so only the
relay's own cost). Needs PostgreSQL on 127.0.0.1:5432; no broker.

    .venv/bin/python bench/cost_intake.py          # N=300 ROUNDS=3 BATCH=100 PROFILE=<label>

PROFILE=<label> prints a cProfile of that unit timed by CPU (``process_time``), so time spent
waiting for PostgreSQL does not show up as the cost of the call that waited.
"""
from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import psycopg
from sqlalchemy import event, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services/referral-intake/tests"))
from intake_testkit import Intake, referral_body

from referral_intake import (
    bootstrap,
    consumers,
)
from servicekit import events
from servicekit.consumer import ConsumerRunner, RunnerConfig
from servicekit.db import run_migrations
from servicekit.outbox import OutboxRelay
from servicekit.settings import Settings

N = int(os.environ.get("N", "300"))
PROFILE = os.environ.get("PROFILE")
name = f"perf_{uuid.uuid4().hex[:8]}"
with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
    c.execute(f'CREATE DATABASE "{name}"')
url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
tmp = Path(f"/tmp/perf/var_{name}")
settings = Settings.from_env("referral-intake", {"VAR_DIR": str(tmp), "INTAKE_DATABASE_URL": url,
                                                 "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"} |
                             {k: v for k, v in os.environ.items() if k.startswith("X_")})
run_migrations(url, bootstrap.MIGRATIONS)


it = Intake(settings)
logging.getLogger().handlers[0].stream = open(os.devnull, "w")  # noqa: SIM115 - JSON logs formatted as in production, discarded
counts = {"stmts": 0, "commits": 0}
import psycopg as _pg

_orig = _pg.Connection._exec_command
def _cmd(self, *a, **k):  # BEGIN, COMMIT, ROLLBACK
    counts["cmds"] = counts.get("cmds", 0) + 1
    return _orig(self, *a, **k)
_pg.Connection._exec_command = _cmd
_oexec = _pg.Cursor.execute
def _exec(self, *a, **k):
    counts["cmds"] = counts.get("cmds", 0) + 1
    return _oexec(self, *a, **k)
_pg.Cursor.execute = _exec
event.listen(it.db.engine, "before_cursor_execute", lambda *a, **k: counts.__setitem__("stmts", counts["stmts"] + 1))
event.listen(it.db.engine, "commit", lambda *a, **k: counts.__setitem__("commits", counts["commits"] + 1))
hdr = it.officer()

def post(i):
    h = dict(hdr, **{"Idempotency-Key": uuid.uuid4().hex})
    r = it.client.post("/v1/referrals", json=referral_body(), headers=h)
    assert r.status_code == 201, r.get_json()
    return r.get_json()["id"]

def measure(label, fn, n):
    for i in range(5): fn(i)  # warm
    counts.update(stmts=0, commits=0, cmds=0)
    if PROFILE == label:
        import cProfile
        import pstats
        pr = cProfile.Profile(time.process_time); pr.enable()  # CPU, not waits
    cpus, out = [], []
    for _ in range(int(os.environ.get("ROUNDS", "3"))):  # best of: load only ever adds
        counts.update(stmts=0, commits=0, cmds=0)
        t0, w0 = time.process_time(), time.perf_counter()
        out += [fn(i) for i in range(n)]
        cpus.append(time.process_time() - t0); wall = time.perf_counter() - w0
    cpu = min(cpus)
    if PROFILE == label:
        pr.disable(); pstats.Stats(pr).sort_stats(os.environ.get("SORT","cumulative")).print_stats(45)
    print(f"{label:28s} stmts/unit={counts['stmts']/n:6.2f} commits/unit={counts['commits']/n:5.2f} roundtrips/unit={counts['cmds']/n:5.2f} "
          f"cpu_ms/unit={cpu*1000/n:6.2f} (wall {wall*1000/n:6.2f})", flush=True)
    return out

ids = measure("POST /v1/referrals", post, N)
measure("POST /v1/referrals (replay)", lambda i: it.client.post(
    "/v1/referrals", json=referral_body(), headers=dict(hdr, **{"Idempotency-Key": "fixed"})), N)

# consumer: routing.proposed for each submitted referral, batched per poll like ConsumerRunner
ctx = it.ctx
spec = consumers.consumer_specs(ctx)[0]
runner = ConsumerRunner(name=spec.name, db=it.db, consumer=None, producer=None, topics=spec.topics,
                        handlers=spec.handlers, config=RunnerConfig(batch_size=int(os.environ.get("BATCH", "100"))))
def rec(i, rid):
    env = events.new_event(events.ROUTING_PROPOSED, subject=rid, sequence=1, source="matching", data={
        "referral_id": rid, "attempt": 1, "service_id": str(uuid.uuid4()), "organization_id": str(uuid.uuid4()),
        "score": 1.0, "reasons": [], "eliminated": {}, "proposed_at": "2026-01-01T00:00:00Z"})
    return SimpleNamespace(topic="routing.decisions", partition=0, offset=i, key=rid.encode(),
                           value=events.encode(env), headers=[])
recs = [rec(i, rid) for i, rid in enumerate(ids)]
extra = [post(i) for i in range(5)]
warm = [rec(10000 + i, rid) for i, rid in enumerate(extra)]
runner.process_batch(warm)
counts.update(stmts=0, commits=0, cmds=0)
if PROFILE == "consumer":
    import cProfile
    import pstats
    pr = cProfile.Profile(time.process_time); pr.enable()  # CPU, not waits
B = runner.config.batch_size
third = len(recs) // 3
cpus = []
for part in (recs[:third], recs[third:2 * third], recs[2 * third:3 * third]):
    t0 = time.process_time()
    for s in range(0, len(part), B):
        runner.process_batch(part[s:s + B])
    cpus.append(time.process_time() - t0)
cpu = min(cpus) * 3
if PROFILE == "consumer":
    pr.disable(); pstats.Stats(pr).sort_stats("cumulative").print_stats(40)
print(f"{'consumer routing.proposed':28s} stmts/unit={counts['stmts']/len(recs):6.2f} commits/unit={counts['commits']/len(recs):5.2f} roundtrips/unit={counts['cmds']/len(recs):5.2f} "
      f"cpu_ms/unit={cpu*1000/len(recs):6.2f}  (batch {B})", flush=True)

# outbox relay with an instant-ack producer
class Fut:
    is_done = True
    def succeeded(self): return True
class Prod:
    def send(self, *a, **k): return Fut()
    def flush(self, timeout=None): pass
relay = OutboxRelay(it.db, Prod(), batch_size=int(os.environ.get("OBATCH", "200")))
with it.db.engine.connect() as c:
    unsent = c.execute(text("select count(*) from outbox where sent_at is null")).scalar()
counts.update(stmts=0, commits=0, cmds=0)
if PROFILE == "relay":
    import cProfile
    import pstats
    pr = cProfile.Profile(time.process_time); pr.enable()  # CPU, not waits
t0 = time.process_time(); total = 0
while (n := relay.run_once()):
    total += n
cpu = time.process_time() - t0
if PROFILE == "relay":
    pr.disable(); pstats.Stats(pr).sort_stats("cumulative").print_stats(30)
print(f"{'outbox relay':28s} stmts/unit={counts['stmts']/total:6.2f} commits/unit={counts['commits']/total:5.2f} roundtrips/unit={counts['cmds']/total:5.2f} "
      f"cpu_ms/unit={cpu*1000/total:6.2f}  ({total} events, batch {relay.batch_size})", flush=True)
it.db.dispose()
with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
    c.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
