"""The PII vault (DESIGN.md §6): per-subject data keys, field encryption, crypto-shredding.

Every decrypting read and every write goes through here and is audited in the same
transaction. The keyring is re-read when its file changes, so `referrals keys rotate` can
add a key while the api keeps serving: a wrapped key naming a key id this process has not
seen yet triggers a reload instead of a failure.
"""
from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from servicekit import crypto
from servicekit.auth import Principal

from . import audit
from .tables import pii_grants, referrals, subjects

SUBJECT_FIELDS = ("given_name", "family_name", "birth_date", "phone", "email")


class KeySource:
    """The current keyring: inline (fixed) or a file re-read when it changes."""

    def __init__(self, keyring: crypto.Keyring, path: Path | None) -> None:
        self._keyring, self._path = keyring, path
        self._mtime = path.stat().st_mtime_ns if path and path.exists() else 0
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def current(self, force: bool = False) -> crypto.Keyring:
        if self._path is None:
            return self._keyring
        now = time.monotonic()
        if force or now - self._checked > 1.0:
            with self._lock:
                self._checked = now
                mtime = self._path.stat().st_mtime_ns
                if force or mtime != self._mtime:
                    self._keyring = crypto.Keyring.from_json(self._path.read_text("utf-8"))
                    self._mtime = mtime
        return self._keyring

    def unwrap(self, wrapped: str, subject_id: str) -> bytes:
        ring = self.current()
        if crypto.wrapped_key_id(wrapped) not in ring.kids:
            ring = self.current(force=True)
        return ring.unwrap(wrapped, subject_id)

    def wrap(self, dek: bytes, subject_id: str) -> str:
        return self.current().wrap(dek, subject_id)


SUBJECT_COLUMNS = ("id", "wrapped_key", "key_version", *(f"{n}_ct" for n in SUBJECT_FIELDS),
                   "location_ct", "created_at")


def subject_row(keys: KeySource, subject: dict[str, Any], location: dict[str, float],
                now: datetime) -> tuple[str, bytes, list[str], dict[str, Any]]:
    """A new subject's row, every field encrypted under a fresh data key: (id, data key,
    fields written, row with every column of ``SUBJECT_COLUMNS``, None where absent)."""
    subject_id = str(uuid.uuid4())
    dek = crypto.new_data_key()
    sealer = crypto.FieldSealer(dek)  # one cipher object for all of the subject's fields
    row: dict[str, Any] = {"id": subject_id, "wrapped_key": keys.wrap(dek, subject_id),
                           "key_version": 1, "created_at": now}
    written = []
    for name in SUBJECT_FIELDS:
        value = subject.get(name)
        if value is not None:
            row[f"{name}_ct"] = sealer.seal(str(value), table="subjects", column=name,
                                            row_id=subject_id, key_version=1)
            written.append(name)
        else:
            row[f"{name}_ct"] = None
    row["location_ct"] = sealer.seal(f"{location['lat']},{location['lon']}", table="subjects",
                                     column="location", row_id=subject_id, key_version=1)
    return subject_id, dek, [*written, "location"], row


def seal(dek: bytes, value: str, table: str, column: str, row_id: str) -> str:
    return crypto.encrypt_field(dek, value, table=table, column=column, row_id=row_id,
                                key_version=1)


def data_key(session: Session, keys: KeySource, subject_id: str) -> bytes | None:
    """The subject's data key, or None once the subject was erased."""
    wrapped = session.execute(select(subjects.c.wrapped_key)
                              .where(subjects.c.id == subject_id)).scalar()
    return None if wrapped is None else keys.unwrap(wrapped, subject_id)


def read_subject(session: Session, keys: KeySource, audit_key: bytes, actor: Principal, *,
                 referral_id: str, subject_id: str, purpose: str,
                 with_location: bool = False, with_notes: bool = False) -> dict[str, Any]:
    """Decrypt the subject's fields for ``actor`` and audit the read (erased: ``{}``)."""
    row = session.execute(select(subjects).where(subjects.c.id == subject_id)).first()
    if row is None or row.wrapped_key is None:
        audit.record(session, audit_key, actor=actor, action="read", purpose=purpose,
                     referral_id=referral_id, subject_id=subject_id, outcome="erased")
        return {}
    dek = keys.unwrap(row.wrapped_key, subject_id)
    out: dict[str, Any] = {}
    for name in SUBJECT_FIELDS:
        token = getattr(row, f"{name}_ct")
        if token:
            out[name] = crypto.decrypt_field(dek, token, table="subjects", column=name,
                                             row_id=subject_id, key_version=row.key_version)
    if with_location and row.location_ct:
        lat, lon = crypto.decrypt_field(dek, row.location_ct, table="subjects",
                                        column="location", row_id=subject_id,
                                        key_version=row.key_version).split(",")
        out["location"] = {"lat": float(lat), "lon": float(lon)}
    if with_notes:
        notes = session.execute(select(referrals.c.notes_ct)
                                .where(referrals.c.id == referral_id)).scalar()
        if notes:
            out["notes"] = crypto.decrypt_field(dek, notes, table="referrals", column="notes",
                                                row_id=referral_id, key_version=1)
    audit.record(session, audit_key, actor=actor, action="read", purpose=purpose,
                 referral_id=referral_id, subject_id=subject_id, fields=list(out))
    return out


def erase(session: Session, audit_key: bytes, actor: Principal, subject_id: str,
          referral_id: str, now: datetime) -> bool:
    """Crypto-shred: drop the wrapped data key. Returns False if already erased."""
    done: int = session.execute(update(subjects).where(subjects.c.id == subject_id,
                                                  subjects.c.wrapped_key.is_not(None))
                           .values(wrapped_key=None, erased_at=now)).rowcount  # type: ignore[attr-defined]
    session.execute(update(pii_grants).where(pii_grants.c.referral_id.in_(
        select(referrals.c.id).where(referrals.c.subject_id == subject_id)))
        .values(expires_at=now))
    audit.record(session, audit_key, actor=actor, action="erase", purpose="erasure_request",
                 referral_id=referral_id, subject_id=subject_id,
                 fields=list(SUBJECT_FIELDS) + ["location", "notes"],
                 outcome="ok" if done else "already_erased", now=now)
    return bool(done)


def rotate(db: Any, keys: KeySource, audit_key: bytes, batch: int = 200) -> int:
    """Re-wrap every data key not yet under the active KEK, in small transactions, so the
    api keeps serving (rows are locked a batch at a time; erasure wins over re-wrapping)."""
    ring = keys.current(force=True)
    total = 0
    while True:
        with db.transaction() as session:
            query = (select(subjects.c.id, subjects.c.wrapped_key)
                     .where(subjects.c.wrapped_key.is_not(None),
                            ~subjects.c.wrapped_key.like(f"kek:{ring.active}:%"))
                     .order_by(subjects.c.id).limit(batch))
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = session.execute(query).all()
            for sid, wrapped in rows:
                session.execute(update(subjects).where(subjects.c.id == sid,
                                                       subjects.c.wrapped_key == wrapped)
                                .values(wrapped_key=ring.rewrap(wrapped, sid)))
            if rows:
                audit.record(session, audit_key, actor=None, action="rewrap",
                             purpose="key_rotation", fields=["data_key"])
        total += len(rows)
        if len(rows) < batch:
            return total
