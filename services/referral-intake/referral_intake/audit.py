"""Append-only, hash-chained audit log of every PII read and write (DESIGN.md §6).

The log is 16 independent chains, so that concurrent requests about different residents
do not queue on one lock: a row goes to the chain of its subject (rows without one to
chain 0), so one resident's history stays in order in one chain. Each row's ``hash`` is
HMAC-SHA256(chain key, prev_hash || canonical row), the row including its chain and ``seq``.
One ``audit_head`` row per chain holds its last seq and hash; appending locks it, and it
makes a deleted tail detectable. The chain key is derived from the PII keyring, so someone
who can only write to the database cannot forge a consistent chain after tampering.
``verify`` reports the first modified, missing or reordered row of any chain. On
PostgreSQL a trigger also refuses UPDATE/DELETE.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import NoResultFound
from sqlalchemy.orm import Session

from servicekit import events
from servicekit.auth import Principal

from . import sql
from .tables import audit_head, audit_log

GENESIS = "0" * 64
CHAINS = 16  # the migration creates one audit_head row per chain
_HASHED = ("chain", "seq", "occurred_at", "actor", "role", "action", "purpose", "referral_id",
           "subject_id", "fields", "outcome")


def _digest(key: bytes, prev_hash: str, row: dict[str, Any]) -> str:
    canonical = json.dumps([prev_hash] + [row[name] for name in _HASHED],
                           separators=(",", ":"), sort_keys=True)
    return hmac.new(key, canonical.encode("utf-8"), hashlib.sha256).hexdigest()


def record(session: Session, key: bytes, *, actor: Principal | None, action: str,
           purpose: str, fields: Iterable[str] = (), referral_id: str | None = None,
           subject_id: str | None = None, outcome: str = "ok",
           now: datetime | None = None) -> int:
    """Append one entry in the caller's transaction; returns its seq.

    ``purpose`` is a short code (never free text: it is stored in clear).
    """
    chain = chain_of(subject_id)
    row = entry(key, lock_head(session, chain), chain=chain, actor=actor, action=action,
                purpose=purpose, fields=fields, referral_id=referral_id, subject_id=subject_id,
                outcome=outcome, now=now)
    # the row and the new head in one round trip (the head stays locked until commit)
    sql.execute_all(session, [APPEND, ADVANCE], sql.bound(PREFIX, row))
    return int(row["seq"])


# Prebuilt (compiled once): the entry and the head it advances, bound to ``entry``'s row
# with ``sql.bound(PREFIX, row)``.
PREFIX = "a_"


def appender(**shared: Any) -> Any:
    """The INSERT of one entry, its columns bound to ``a_<column>``, or to the expressions
    given in ``shared`` (parameters a combined statement shares; they must hold the same
    values as the entry's row, which its hash covers)."""
    return sql.insert_bound(audit_log, PREFIX, [c.name for c in audit_log.c], **shared)


APPEND = appender()
ADVANCE = (update(audit_head).where(audit_head.c.id == bindparam("a_chain"))
           .values(seq=bindparam("a_seq"), hash=bindparam("a_hash")))
_HEAD = select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == bindparam("chain"))
_HEAD_LOCKED = _HEAD.with_for_update()


class Head(NamedTuple):
    seq: int
    hash: str


def lock_head(session: Session | Connection, chain: int) -> Head:
    """Lock chain ``chain``'s head until commit; returns its (seq, hash). ``session``: the
    session or its connection."""
    conn = session if isinstance(session, Connection) else session.connection()
    if conn.dialect.name != "postgresql":
        return Head(*conn.execute(_HEAD, {"chain": chain}).one())
    rows = sql.run(conn, _HEAD_LOCKED, {"chain": chain}) or []
    if len(rows) != 1:
        raise NoResultFound(f"audit chain {chain} has {len(rows)} head rows")
    return Head(*rows[0])


def entry(key: bytes, head: Any, *, chain: int, actor: Principal | None, action: str,
          purpose: str, fields: Iterable[str] = (), referral_id: str | None = None,
          subject_id: str | None = None, outcome: str = "ok",
          now: datetime | None = None) -> dict[str, Any]:
    """The next entry of ``chain`` after its locked ``head``: every column of ``audit_log``
    (the parameters of ``APPEND`` and ``ADVANCE``)."""
    row = {
        "chain": chain, "seq": int(head.seq) + 1,
        "occurred_at": events.format_time(now or datetime.now(UTC)),
        "actor": actor.sub if actor else "system", "role": actor.role if actor else "system",
        "action": action, "purpose": purpose, "referral_id": referral_id,
        "subject_id": subject_id, "fields": sorted(set(fields)), "outcome": outcome,
    }
    row["prev_hash"] = head.hash
    row["hash"] = _digest(key, head.hash, row)
    return row


def chain_of(subject_id: str | None) -> int:
    if not subject_id:
        return 0
    return int(hashlib.sha256(subject_id.encode()).hexdigest()[:8], 16) % CHAINS


@dataclass(frozen=True)
class Verdict:
    ok: bool
    rows: int
    first_bad_seq: int | None = None
    problem: str | None = None
    chain: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "rows": self.rows, "chain": self.chain,
                "first_bad_seq": self.first_bad_seq, "problem": self.problem}


def verify(session: Session, key: bytes, batch: int = 5000) -> Verdict:
    """Walk every chain in stored order and check links, hashes, numbering and heads."""
    heads = session.execute(select(audit_head).order_by(audit_head.c.id)).all()
    total = 0
    for head in heads:
        verdict = _verify_chain(session, key, head, batch)
        total += verdict.rows
        if not verdict.ok:
            return Verdict(False, total, verdict.first_bad_seq, verdict.problem, head.id)
    stored = session.execute(select(func.count()).select_from(audit_log)).scalar_one()
    if stored != total:
        return Verdict(False, total, None, "rows outside every chain")
    return Verdict(True, total)


def _verify_chain(session: Session, key: bytes, head: Any, batch: int) -> Verdict:
    prev, expected_seq, count, last = GENESIS, 1, 0, 0
    while True:
        rows = session.execute(select(audit_log).where(audit_log.c.chain == head.id,
                                                       audit_log.c.seq > last)
                               .order_by(audit_log.c.seq).limit(batch)).mappings().all()
        for r in rows:
            count += 1
            if r["seq"] != expected_seq:
                return Verdict(False, count, expected_seq, "row missing (sequence gap)")
            if r["prev_hash"] != prev:
                return Verdict(False, count, r["seq"], "link broken (row deleted or reordered)")
            if _digest(key, prev, dict(r)) != r["hash"]:
                return Verdict(False, count, r["seq"], "row modified")
            prev, expected_seq, last = r["hash"], expected_seq + 1, r["seq"]
        if len(rows) < batch:
            break
    if int(head.seq) != expected_seq - 1 or head.hash != prev:
        return Verdict(False, count, expected_seq, "chain head does not match (tail deleted)")
    return Verdict(True, count)


def page(session: Session, *, limit: int, offset: int, referral_id: str | None
         ) -> tuple[list[dict[str, Any]], int]:
    """Entries newest first (admin view; entries hold ids and codes only, never PII)."""
    cond = [] if referral_id is None else [audit_log.c.referral_id == referral_id]
    total = session.execute(select(func.count()).select_from(audit_log).where(*cond)).scalar_one()
    rows = session.execute(select(audit_log).where(*cond)
                           .order_by(audit_log.c.occurred_at.desc(), audit_log.c.chain,
                                     audit_log.c.seq.desc())
                           .limit(limit).offset(offset)).mappings().all()
    return [dict(r) for r in rows], int(total)
