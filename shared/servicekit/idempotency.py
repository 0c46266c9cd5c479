"""Idempotency-Key for POSTs that create: the same key and body give the same response.

The stored response is written in the same transaction as the resource it describes, so a
client whose connection dropped after the commit gets the original answer on retry, and a
concurrent duplicate loses on the primary key instead of creating a second resource.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from flask import Response, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .db import Database
from .web import Problem, json_default

HEADER = "Idempotency-Key"
_VALID = re.compile(r"^[\x21-\x7e]{1,200}$")


@dataclass(frozen=True)
class Stored:
    status: int
    body: str
    request_hash: str


def request_key() -> str | None:
    """The request's Idempotency-Key, validated (printable ASCII, at most 200 chars)."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not _VALID.match(key):
        raise Problem(400, "Bad Request", f"{HEADER} must be 1-200 printable ASCII characters",
                      type_="/problems/idempotency-key")
    return key


def body_hash(payload: Any) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _lookup(session: Session, principal: str, key: str) -> Stored | None:
    t = session.info["metadata"].tables["idempotency_key"]
    row = session.execute(select(t.c.status_code, t.c.response_body, t.c.request_hash)
                          .where(t.c.principal == principal, t.c.key == key)).first()
    return Stored(row[0], row[1], row[2]) if row else None


def _replay(stored: Stored, digest: str) -> Response:
    if stored.request_hash != digest:
        raise Problem(422, "Unprocessable Content",
                      f"{HEADER} was already used with a different request body",
                      type_="/problems/idempotency-key-reused")
    resp = Response(stored.body, status=stored.status, mimetype="application/json")
    resp.headers["Idempotent-Replayed"] = "true"
    return resp


class Answer:
    """The Idempotency-Key row of a command that writes it itself, together with its other
    rows (``run(..., writes_key=True)``): one statement less, the same guarantees."""

    def __init__(self, principal: str, key: str | None, request_hash: str) -> None:
        self.principal, self.key, self.request_hash = principal, key, request_hash
        self.status: int | None = None
        self.text = ""

    def __call__(self, status: int, body: dict[str, Any], resource_id: str | None
                 ) -> dict[str, Any] | None:
        """Fix the answer; returns the key row (every column of ``idempotency_key``) that the
        command must write in its transaction, or None when the request has no key."""
        self.status, self.text = status, json.dumps(body, default=json_default)
        if self.key is None:
            return None
        return {"principal": self.principal, "key": self.key,
                "request_hash": self.request_hash, "status_code": status,
                "response_body": self.text, "resource_id": resource_id,
                "created_at": datetime.now(timezone.utc)}  # noqa: UP017 - as below


def run(db: Database, *, principal: str, key: str | None, payload: Any,
        work: Callable[..., Any], check_first: bool = True,
        writes_key: bool = False) -> Response:
    """Run ``work(session) -> (status, body, resource_id)`` at most once per (principal, key).

    ``work`` must not commit; this function commits its effects together with the stored
    response. Without a key, ``work`` simply runs in its own transaction.

    ``check_first=False`` (creates, where a new key is the rule): skip the lookup and let the
    key's primary key decide. A duplicate then fails on the key INSERT (or ``work`` fails),
    the transaction rolls back whole, and the stored answer is replayed; one statement less
    per request, the same guarantees (nothing of the losing attempt is committed).

    ``writes_key=True``: ``work(session, answer)`` calls ``answer(status, body, resource_id)``
    once, before its last write, and writes the row it returns (if any) to the
    ``idempotency_key`` table in that write; a duplicate then fails inside ``work``.
    """
    digest = body_hash(payload)
    for attempt in range(2):
        with db.uow() as uow:
            if key is not None and (check_first or attempt > 0):
                stored = _lookup(uow.session, principal, key)
                if stored is not None:
                    return _replay(stored, digest)
            answer = Answer(principal, key, digest) if writes_key else None
            try:
                if answer is not None:
                    work(uow.session, answer)
                    if answer.status is None:
                        raise RuntimeError("writes_key=True: work never gave its answer")
                    status, text = answer.status, answer.text
                else:
                    status, body, resource_id = work(uow.session)
            except Exception as error:
                # the key's INSERT is part of ``work`` when it writes the key itself
                lost_race = writes_key and isinstance(error, IntegrityError)
                if key is None or attempt > 0 or (check_first and not lost_race):
                    raise
                uow.rollback()
                stored = _lookup(uow.session, principal, key)
                if stored is not None:  # a retry whose first attempt already committed
                    return _replay(stored, digest)
                raise
            try:
                if answer is None:
                    text = json.dumps(body, default=json_default)
                    if key is not None:
                        t = uow.session.info["metadata"].tables["idempotency_key"]
                        uow.session.execute(t.insert().values(
                            principal=principal, key=key, request_hash=digest,
                            status_code=status, response_body=text, resource_id=resource_id,
                            created_at=datetime.now(timezone.utc)))
                uow.commit()
            except IntegrityError:
                uow.rollback()
                continue  # a concurrent request with the same key won: replay its answer
            return Response(text, status=status, mimetype="application/json")
    raise Problem(409, "Conflict", f"A request with this {HEADER} is still in progress")
