"""referral-intake use cases. Handlers take the open session and never commit.

Every status or offer change goes through :func:`apply`, which asks the pure domain
(``domain.decide``) and then persists the decision: offers, the referral row, timeline rows
and one ``referral.status_changed`` event per change, all in the caller's transaction.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import (
    JSON,
    String,
    bindparam,
    cast,
    func,
    insert,
    literal_column,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert as upsert_pg
from sqlalchemy.orm import Session

from servicekit import crypto, events, geo, logs, outbox
from servicekit.auth import Principal
from servicekit.consumer import PermanentError
from servicekit.db import locked, upsert, write_all

from . import domain, sql, vault
from .tables import consents, metadata, offers, referrals, services, subjects, timeline

SOURCE = "referral-intake"
PII_FIELDS = vault.SUBJECT_FIELDS


@dataclass(frozen=True)
class Context:
    keyring: crypto.Keyring
    ttl: domain.OfferTtl
    pseudonym_key: bytes
    keys: vault.KeySource | None = None
    first_contact: domain.OfferTtl | None = None
    audit_key: bytes = field(default=b"", repr=False)
    break_glass: timedelta = timedelta(minutes=15)

    @property
    def keysource(self) -> vault.KeySource:
        return self.keys or vault.KeySource(self.keyring, None)


class NotFound(Exception):
    pass


class Invalid(Exception):
    """A request that is well-formed but names something unusable (422 naming ``field``)."""

    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field, self.message = field_name, message


def _now() -> datetime:
    return datetime.now(UTC)


def _age(subject: dict[str, Any], today: date) -> int | None:
    if subject.get("age") is not None:
        return int(subject["age"])
    born = subject.get("birth_date")
    if born is None:
        return None
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def _eligibility(body: dict[str, Any], today: date) -> dict[str, Any]:
    s = body["subject"]
    return {
        "age": _age(s, today), "gender": s.get("gender"),
        "preferred_language": s.get("preferred_language"),
        "needs_interpreter": bool(s.get("needs_interpreter", False)),
        "flags": sorted(set(body.get("flags", []))),
    }


def _shared_subject(session: Session, principal: Principal, body: dict[str, Any]
                    ) -> tuple[str, bytes, Any]:
    """Another need of a resident the officer already referred: reuse that subject."""
    other = session.execute(select(referrals).where(
        referrals.c.id == str(body["same_subject_as"]),
        referrals.c.officer_sub == principal.sub)).first()
    if other is None:
        raise Invalid("same_subject_as", "No referral of yours with this id.")
    return other.subject_id, b"", other


def submit_referral(session: Session, ctx: Context, principal: Principal,
                    body: dict[str, Any],
                    answer: Callable[[dict[str, Any], str], dict[str, Any] | None] | None = None
                    ) -> dict[str, Any]:
    """Store a new referral (PII encrypted, audited) and emit ``referral.submitted``.

    ``answer(view, referral_id)`` (the Idempotency-Key's answer, see
    ``idempotency.run(..., writes_key=True)``) returns the key row to write with the
    referral, or None. On PostgreSQL the whole submission is two statements: the audit
    chain's head is locked and read, then subject, referral, consent, timeline, event
    sequence, outbox event, audit entry, chain head and key row go in one statement.
    """
    from . import audit, views

    now = _now()
    referral_id = str(uuid.uuid4())
    if body.get("same_subject_as"):
        subject_id, _, other = _shared_subject(session, principal, body)
        dek = vault.data_key(session, ctx.keysource, subject_id)
        if dek is None:
            raise Invalid("same_subject_as", "That resident's data was erased.")
        coarse = {"geohash": other.geohash, "lat": other.coarse_lat, "lon": other.coarse_lon}
        eligibility = dict(other.eligibility, flags=sorted(set(body.get("flags", []))))
        written: list[str] = []
        subject_row = None
    else:
        subject_id, dek, written, subject_row = vault.subject_row(
            ctx.keysource, body["subject"], body["location"], now)
        coarse = dict(geo.coarsen(body["location"]["lat"], body["location"]["lon"]))
        eligibility = _eligibility(body, now.date())
    notes = body.get("notes")
    row = dict(  # noqa: C408 - keyword form reads like the table
        id=referral_id, short_id=domain.short_id(referral_id), subject_id=subject_id,
        need=body["need"], urgency=body["urgency"], status="submitted",
        agency_id=principal.agency, officer_sub=principal.sub,
        officer_ref=crypto.blind_index(ctx.pseudonym_key, principal.sub, purpose="officer"),
        geohash=coarse["geohash"], coarse_lat=coarse["lat"], coarse_lon=coarse["lon"],
        eligibility=eligibility, created_at=now, updated_at=now,
        notes_ct=None if not notes else vault.seal(dek, notes, "referrals", "notes",
                                                   referral_id),
    )
    consent = body["consent"]
    consent_row = dict(  # noqa: C408
        referral_id=referral_id, share_with_provider=consent["share_with_provider"],
        referrer_updates=consent["referrer_updates"],
        contact_methods=sorted(set(consent.get("contact_methods", []))),
        obtained_via=consent["obtained_via"], captured_by=principal.sub, captured_at=now,
        expires_at=consent.get("expires_at"))
    env = events.new_event(  # a new aggregate: its first event is sequence 1
        events.REFERRAL_SUBMITTED, subject=referral_id, sequence=1, source=SOURCE,
        correlation_id=logs.correlation_id.get(), causation_id=logs.causation_id.get(),
        data=submitted_data(row, coarse, eligibility, consent, now),
        trusted=subject_row is not None and _AGENCY_ID_MAX >= len(principal.agency or ""))
    view = views.submitted_view(row, consent, now)
    key_row = answer(view, referral_id) if answer is not None else None
    event = outbox.row_for(env)
    params = {"rid": referral_id, "sid": subject_id, "now": now, "sub": principal.sub,
              **sql.bound("r_", row), **sql.bound("c_", consent_row),
              **sql.bound("o_", event)}
    if subject_row is not None:
        params.update(sql.bound("s_", subject_row))
    if key_row is not None:
        params.update(sql.bound("k_", key_row))
    # last before the commit, so the audit chain's head stays locked only for one write
    chain = audit.chain_of(subject_id)
    conn = session.connection()
    params.update(sql.bound(audit.PREFIX, audit.entry(
        ctx.audit_key, audit.lock_head(conn, chain), chain=chain, actor=principal,
        action="write", purpose="intake", fields=written + (["notes"] if notes else []),
        referral_id=referral_id, subject_id=subject_id, now=now)))
    sql.execute_all(conn, _SUBMIT[subject_row is not None, key_row is not None], params)
    return view


_AGENCY_ID_MAX = 200  # events._id(): agency ids of longer token claims go through marshmallow


def submitted_data(row: dict[str, Any], coarse: dict[str, Any], eligibility: dict[str, Any],
                   consent: dict[str, Any], now: datetime) -> dict[str, Any]:
    """``referral.submitted`` data exactly as the contract's schema loads and dumps it (its
    field order, defaults filled in), so a submission from a validated request body may skip
    that second validation (``new_event(..., trusted=True)``): every value is one the
    request schema (``ReferralCreateIn``: the same vocabularies, age 0-120, a non-empty
    gender of at most 40 characters, a language tag) or this service (ids, the pseudonym,
    the coarsened cell, times) already guarantees; the agency id comes from the token, and
    longer ones than the contract allows are validated in full. A test compares this with
    the fully validated form for a matrix of bodies.
    """
    return {
        "referral_id": row["id"], "short_id": row["short_id"], "need": row["need"],
        "urgency": row["urgency"],
        "coarse_location": {"geohash": coarse["geohash"], "lat": coarse["lat"],
                            "lon": coarse["lon"]},
        "eligibility": {"age": eligibility.get("age"), "age_band": eligibility.get("age_band"),
                        "gender": eligibility.get("gender"),
                        "preferred_language": eligibility.get("preferred_language"),
                        "needs_interpreter": bool(eligibility.get("needs_interpreter", False)),
                        "flags": list(eligibility.get("flags", []))},
        "consent": consent_summary(consent), "agency_id": row["agency_id"],
        "officer_ref": row["officer_ref"], "submitted_at": now,
    }


def _submit_statements() -> dict[tuple[bool, bool], list[Any]]:
    """The statements of a submission by (new subject?, Idempotency-Key?), built once.

    The referral's id, the subject's id, the time and the officer appear in several rows:
    each is one shared parameter (``rid``, ``sid``, ``now``, ``sub``), so that the combined
    statement stays within the parameter count whose parsing psycopg caches
    (``psycopg._queries.MAX_CACHED_STATEMENT_PARAMS``; a test keeps it so).
    """
    from . import audit

    kit = metadata.tables
    rid, sid = bindparam("rid", type_=referrals.c.id.type), bindparam("sid", type_=String(36))
    now = bindparam("now", type_=referrals.c.created_at.type)
    sub = bindparam("sub", type_=referrals.c.officer_sub.type)
    new_subject = sql.insert_bound(subjects, "s_", vault.SUBJECT_COLUMNS, id=sid,
                                   created_at=now)
    rows = [
        sql.insert_bound(referrals, "r_", [
            "short_id", "need", "urgency", "agency_id", "officer_ref", "geohash",
            "coarse_lat", "coarse_lon", "eligibility", "notes_ct"],
            id=rid, subject_id=sid, status=literal_column("'submitted'"), officer_sub=sub,
            created_at=now, updated_at=now),
        sql.insert_bound(consents, "c_", [
            "share_with_provider", "referrer_updates", "contact_methods", "obtained_via",
            "expires_at"], referral_id=rid, captured_by=sub, captured_at=now),
        insert(timeline).values(referral_id=rid, to_status=literal_column("'submitted'"),
                                actor_role=literal_column("'officer'"), occurred_at=now),
        # the aggregate's first sequence number (a plain INSERT: the id was made just now)
        insert(kit["event_sequence"]).values(subject=rid, last_sequence=literal_column("1")),
        sql.insert_bound(kit["outbox"], "o_", ["event_id", "topic", "event_type", "payload",
                                               "headers"], key=rid, created_at=now),
        audit.appender(referral_id=rid, subject_id=sid, actor=sub),
    ]
    key = sql.insert_bound(kit["idempotency_key"], "k_", [
        "principal", "key", "request_hash", "status_code", "response_body"],
        resource_id=rid, created_at=now)
    return {(subject, keyed): ([new_subject] if subject else []) + rows
            + ([key] if keyed else []) + [audit.ADVANCE]
            for subject in (True, False) for keyed in (True, False)}


def consent_summary(consent: Any) -> dict[str, Any]:
    c = dict(consent)
    return {"share_with_provider": bool(c["share_with_provider"]),
            "referrer_updates": c["referrer_updates"],
            "contact_methods": sorted(set(c.get("contact_methods") or []))}


def current_consent(session: Session, referral_id: str) -> dict[str, Any]:
    row = session.execute(select(consents).where(consents.c.referral_id == referral_id)
                          .order_by(consents.c.id.desc()).limit(1)).mappings().first()
    if row is None:
        raise NotFound(referral_id)
    return dict(row)


# ---- applying lifecycle decisions -----------------------------------------------------------

def load_for_update(session: Session, referral_id: str) -> Any:
    return session.execute(locked(session, select(referrals).where(
        referrals.c.id == referral_id))).first()


def domain_state(session: Session, ref: Any) -> domain.Referral:
    rows = session.execute(select(offers).where(offers.c.referral_id == ref.id)
                           .order_by(offers.c.created_at, offers.c.id)).all()
    return domain.Referral(ref.status, tuple(
        domain.Offer(r.id, r.service_id, r.organization_id, r.attempt, r.status, r.expires_at,
                     r.reason_code) for r in rows))


def _offer_data(o: domain.Offer) -> dict[str, Any]:
    return {"offer_id": o.id, "service_id": o.service_id, "organization_id": o.organization_id,
            "expires_at": o.expires_at, "status": o.status, "attempt": o.attempt}


@dataclass
class Outcome:
    """A decision and what persisting it writes, before anything is written: the rows
    and updates for ``offers``, the referral's new values, and per change its timeline
    row and its ``referral.status_changed`` data (in order)."""

    after: domain.Referral
    changes: list[domain.Change]
    new_offers: list[dict[str, Any]]
    offer_updates: list[tuple[str, dict[str, Any]]]
    referral_values: dict[str, Any] | None
    records: list[tuple[dict[str, Any], dict[str, Any]]]


def decide(ctx: Context, ref: Any, before: domain.Referral, cmd: domain.Command, *,
           consent: Callable[[], dict[str, Any]], now: datetime,
           proposal_id: str | None = None, note_ct: str | None = None) -> Outcome:
    """Decide ``cmd`` for the referral row ``ref`` in state ``before``; ``consent()`` gives
    its current consent (asked only when something changes). Writes nothing: ``apply``
    persists one outcome, ``on_routing_proposed_many`` a batch's."""
    after, changes = domain.decide(before, cmd)
    old = {o.id: o for o in before.offers}
    new_offers: list[dict[str, Any]] = []
    offer_updates: list[tuple[str, dict[str, Any]]] = []
    for o in after.offers:
        if o.id not in old:
            new_offers.append(dict(  # noqa: C408 - keyword form reads like the table
                id=o.id, referral_id=ref.id, service_id=o.service_id,
                organization_id=o.organization_id, attempt=o.attempt,
                proposal_id=proposal_id or o.id, status=o.status, expires_at=o.expires_at,
                created_at=now))
        elif old[o.id].status != o.status:
            offer_updates.append((o.id, {"status": o.status, "reason_code": o.reason_code,
                                         "answered_at": now}))
    values = _milestones(ctx, ref, after.status, changes, now) \
        if after.status != before.status else None
    found = consent() if changes else None
    records = [_record(ref, change, found, now=now, proposal_id=proposal_id, note_ct=note_ct)
               for change in changes]
    return Outcome(after, changes, new_offers, offer_updates, values, records)


def apply(session: Session, ctx: Context, ref: Any, cmd: domain.Command, *, now: datetime,
          proposal_id: str | None = None, note_ct: str | None = None
          ) -> tuple[domain.Referral, list[domain.Change]]:
    """Decide ``cmd`` for the locked referral row ``ref`` and persist the outcome."""
    out = decide(ctx, ref, domain_state(session, ref), cmd,
                 consent=lambda: current_consent(session, ref.id), now=now,
                 proposal_id=proposal_id, note_ct=note_ct)
    writes: list[Any] = []  # independent rows and updates: one round trip (db.write_all)
    writes += [offers.insert().values(**row) for row in out.new_offers]
    writes += [update(offers).where(offers.c.id == oid).values(**values)
               for oid, values in out.offer_updates]
    if out.referral_values is not None:
        writes.append(update(referrals).where(referrals.c.id == ref.id)
                      .values(**out.referral_values))
    rows = [row for row, _data in out.records]
    for _row, data in out.records:
        outbox.emit(session, events.REFERRAL_STATUS_CHANGED, subject=ref.id, source=SOURCE,
                    data=data)
    if len(rows) == 1:
        writes.append(timeline.insert().values(**rows[0]))
    write_all(session, writes)
    if len(rows) > 1:  # in order, so timeline ids follow the changes (executemany, cached)
        session.execute(timeline.insert(), rows)
    return out.after, out.changes


def _milestones(ctx: Context, ref: Any, status: str, changes: list[domain.Change],
                now: datetime) -> dict[str, Any]:
    values: dict[str, Any] = {"status": status, "updated_at": now}
    if status == "accepted":
        values["accepted_at"] = now
        ttl = ctx.first_contact or ctx.ttl
        values["first_contact_due_at"] = ttl.expires_at(ref.urgency, now)
    elif ref.status in domain.ACTIVE_CASE and ref.first_contact_at is None and \
            changes[-1].actor_role == "provider":
        values["first_contact_at"] = now
    if status in domain.TERMINAL:
        values["closed_at"] = now
        values["outcome_code"] = changes[-1].outcome_code
    return values


def _record(ref: Any, change: domain.Change, consent: Any, *, now: datetime,
            proposal_id: str | None, note_ct: str | None
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The change's timeline row and its ``referral.status_changed`` data."""
    offer = _offer_data(change.offer) if change.offer else None
    row = dict(  # noqa: C408 - keyword form reads like the table
        referral_id=ref.id, from_status=change.from_status, to_status=change.to_status,
        reason_code=change.reason_code, outcome_code=change.outcome_code,
        actor_role=change.actor_role, offer_id=offer["offer_id"] if offer else None,
        occurred_at=now, note_ct=note_ct)
    return row, {
        "referral_id": ref.id, "short_id": ref.short_id, "need": ref.need,
        "urgency": ref.urgency, "agency_id": ref.agency_id, "officer_ref": ref.officer_ref,
        "from_status": change.from_status, "to_status": change.to_status, "offer": offer,
        "reason_code": change.reason_code, "outcome_code": change.outcome_code,
        "actor_role": change.actor_role, "referrer_updates": consent["referrer_updates"],
        "proposal_id": proposal_id, "occurred_at": now,
    }


# ---- events from matching and the registry -------------------------------------------------

def _proposed_ref(session: Session, referral_id: str) -> Any:
    ref = load_for_update(session, referral_id)
    if ref is None:
        raise PermanentError("proposal for an unknown referral")
    return ref


def _proposal(ctx: Context, ref: Any, d: dict[str, Any], now: datetime) -> domain.Propose:
    return domain.Propose(
        offer_id=str(uuid.uuid4()), service_id=d["service_id"],
        organization_id=d["organization_id"], attempt=d["attempt"],
        expires_at=ctx.ttl.expires_at(ref.urgency, now))


def on_routing_proposed(session: Session, ctx: Context, env: events.Envelope) -> None:
    """Answer a proposal exactly once: make the offer, or void the proposal."""
    d = env.data
    ref = _proposed_ref(session, d["referral_id"])
    now = _now()
    remember_service(session, d["service_id"], d["organization_id"], now)
    apply(session, ctx, ref, _proposal(ctx, ref, d, now), now=now, proposal_id=env.id)


def on_routing_proposed_many(session: Session, ctx: Context,
                             envs: list[events.Envelope]) -> None:
    """``on_routing_proposed`` for each of ``envs`` in turn (a run of a consumer batch), in
    a handful of statements on PostgreSQL whatever the number of events: lock the referrals
    (in id order, as any other batch would: no deadlock), read their offers and current
    consent, write services, offers, referrals and timeline rows together, then the events
    (``outbox.emit_many``: their sequences, and the rows by COPY). Each event is decided in order against the state the ones before
    it left (two proposals for one referral: the second is voided, as alone). Events get
    the correlation and causation each would get alone. An unknown referral raises
    ``PermanentError`` before anything is written: the runner then rolls the batch back and
    handles its events one at a time, which dead-letters that one event."""
    if session.get_bind().dialect.name != "postgresql" or len(envs) == 1:
        for env in envs:
            with logs.correlation(env.correlation_id, env.id):
                on_routing_proposed(session, ctx, env)
        return
    ids = sorted({env.data["referral_id"] for env in envs})
    refs = {r.id: SimpleNamespace(**r._mapping) for r in session.execute(
        select(referrals).where(referrals.c.id.in_(ids)).order_by(referrals.c.id)
        .with_for_update())}
    if len(refs) != len(ids):
        raise PermanentError("proposal for an unknown referral")
    states, consent = _states(session, refs)
    remembered: dict[str, tuple[str, datetime]] = {}
    new_offers: dict[str, dict[str, Any]] = {}
    offer_updates: dict[str, dict[str, Any]] = {}
    referral_values: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    emitted: list[tuple[events.Envelope, dict[str, Any]]] = []
    for env in envs:
        d = env.data
        ref, now = refs[d["referral_id"]], _now()
        if remembered.get(d["service_id"], ("",))[0] != d["organization_id"]:
            remembered[d["service_id"]] = (d["organization_id"], now)

        def found(rid: str = ref.id) -> dict[str, Any]:
            if rid not in consent:
                raise NotFound(rid)
            return consent[rid]

        out = decide(ctx, ref, states[ref.id], _proposal(ctx, ref, d, now), consent=found,
                     now=now, proposal_id=env.id)
        states[ref.id] = out.after
        new_offers.update((row["id"], row) for row in out.new_offers)
        for oid, values in out.offer_updates:
            (new_offers.get(oid) or offer_updates.setdefault(oid, {})).update(values)
        if out.referral_values is not None:
            referral_values.setdefault(ref.id, {}).update(out.referral_values)
            for key, value in out.referral_values.items():
                setattr(ref, key, value)
        for row, data in out.records:
            rows.append(row)
            emitted.append((env, data))
    writes = [_remember_all(remembered)]
    if new_offers:
        writes.append(_insert_json(offers, "j_offers", list(new_offers.values())))
    writes += [update(offers).where(offers.c.id == oid).values(**values)
               for oid, values in offer_updates.items()]
    writes += _update_each(referrals, referral_values)
    if rows:
        writes.append(_insert_json(timeline, "j_timeline", rows))  # in order: ids follow
    write_all(session, writes)
    if emitted:  # each event with the correlation and causation it would get alone
        outbox.emit_many(session, events.REFERRAL_STATUS_CHANGED,
                         [(data["referral_id"], data) for _env, data in emitted],
                         source=SOURCE, causes=[(env.correlation_id, env.id)
                                                for env, _data in emitted])


def _json_rows(table: Any, name: str, rows: list[dict[str, Any]]) -> Any:
    """``rows`` of ``table`` as a set of typed rows from ONE JSON parameter (PostgreSQL's
    ``json_populate_recordset`` with the table's row type), numbered in order: a batch's
    statement then has the same SQL whatever its size (compiled once, cached) instead of
    a bound parameter per value."""
    return func.json_populate_recordset(
        literal_column(f'NULL::"{table.name}"'),
        cast(bindparam(name, json.dumps(rows, default=_json_value)), JSON),
    ).table_valued(*rows[0], with_ordinality="ordinality").alias(f"{name}_rows")


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return "\\x" + value.hex()  # bytea's text form
    raise TypeError(type(value).__name__)


def _insert_json(table: Any, name: str, rows: list[dict[str, Any]]) -> Any:
    """INSERT of ``rows`` (same keys each) in their order (serial ids follow it)."""
    given = _json_rows(table, name, rows)
    keys = list(rows[0])
    return insert(table).from_select(
        keys, select(*(given.c[k] for k in keys)).order_by(given.c.ordinality))


def _states(session: Session, refs: dict[str, Any]
            ) -> tuple[dict[str, domain.Referral], dict[str, dict[str, Any]]]:
    """``domain_state`` and ``current_consent`` of the (locked) referrals, in one statement
    read after the lock, as each would be read alone."""
    latest = select(consents).where(consents.c.referral_id == referrals.c.id) \
        .order_by(consents.c.id.desc()).limit(1).lateral("c")
    found = session.execute(
        select(referrals.c.id.label("rid"), offers, *[
            c.label(f"c_{c.name}") for c in latest.c])
        .select_from(referrals.outerjoin(latest, true())
                     .outerjoin(offers, offers.c.referral_id == referrals.c.id))
        .where(referrals.c.id.in_(list(refs)))
        .order_by(referrals.c.id, offers.c.created_at, offers.c.id)).all()
    held: dict[str, list[domain.Offer]] = {rid: [] for rid in refs}
    consent: dict[str, dict[str, Any]] = {}
    for r in found:
        if r.id is not None:
            held[r.rid].append(domain.Offer(r.id, r.service_id, r.organization_id, r.attempt,
                                            r.status, r.expires_at, r.reason_code))
        if r.c_id is not None:
            consent[r.rid] = {c.name: getattr(r, f"c_{c.name}") for c in latest.c}
    return ({rid: domain.Referral(refs[rid].status, tuple(held[rid])) for rid in refs},
            consent)


def _update_each(table: Any, changed: dict[str, dict[str, Any]]) -> list[Any]:
    """UPDATEs setting each row's values (by id): one per set of columns changed."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for rid, values in changed.items():
        groups.setdefault(tuple(sorted(values)), []).append({"id": rid, **values})
    statements = []
    for keys, rows in groups.items():
        given = _json_rows(table, f"j_{table.name}_{'_'.join(keys)}", rows)
        statements.append(update(table).where(table.c.id == given.c.id).values(
            {k: given.c[k] for k in keys}))
    return statements


def on_routing_exhausted(session: Session, ctx: Context, env: events.Envelope) -> None:
    ref = _proposed_ref(session, env.data["referral_id"])
    apply(session, ctx, ref, domain.Exhaust(), now=_now())


def remember_service(session: Session, service_id: str, org_id: str, now: datetime,
                     **names: Any) -> None:
    values = {"id": service_id, "organization_id": org_id, "updated_at": now, **names}
    stmt = upsert(session, services).values(**values)
    session.execute(stmt.on_conflict_do_update(
        index_elements=[services.c.id],
        set_={k: stmt.excluded[k] for k in values if k != "id"},
        where=None if names else services.c.organization_id != stmt.excluded.organization_id))


def _remember_all(remembered: dict[str, tuple[str, datetime]]) -> Any:
    """``remember_service`` (without names) of each service in one upsert, which, like it,
    rewrites a stored row only when its organization changed."""
    given = _json_rows(services, "j_services", [
        {"id": sid, "organization_id": org, "updated_at": now}
        for sid, (org, now) in remembered.items()])
    stmt = upsert_pg(services).from_select(
        ["id", "organization_id", "updated_at"],
        select(given.c.id, given.c.organization_id, given.c.updated_at))
    return stmt.on_conflict_do_update(
        index_elements=[services.c.id],
        set_={"organization_id": stmt.excluded.organization_id,
              "updated_at": stmt.excluded.updated_at},
        where=services.c.organization_id != stmt.excluded.organization_id)


def on_service_upserted(session: Session, ctx: Context, env: events.Envelope) -> None:
    d = env.data
    remember_service(session, d["service_id"], d["organization_id"], _now(),
                     organization_name=d["organization_name"], service_name=d["service_name"],
                     removed=False)


def on_service_removed(session: Session, ctx: Context, env: events.Envelope) -> None:
    session.execute(update(services).where(services.c.id == env.data["service_id"])
                    .values(removed=True, updated_at=_now()))


def subject_referrals(session: Session, subject_id: str) -> list[Any]:
    return list(session.execute(select(referrals).where(referrals.c.subject_id == subject_id)
                                .order_by(referrals.c.created_at)).all())


def is_erased(session: Session, subject_id: str) -> bool:
    return session.execute(select(subjects.c.wrapped_key).where(
        subjects.c.id == subject_id)).scalar() is None


_SUBMIT = _submit_statements()
