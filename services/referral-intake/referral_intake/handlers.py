"""referral-intake use cases. Handlers take the open session and never commit."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from sqlalchemy import false, func, select, update
from sqlalchemy.orm import Session

from servicekit import crypto, events, geo, outbox
from servicekit.auth import Principal
from servicekit.consumer import PermanentError
from servicekit.db import locked

from . import domain
from .tables import consents, offers, referrals, subjects, timeline

SOURCE = "referral-intake"
PII_FIELDS = ("given_name", "family_name", "birth_date", "phone", "email")


@dataclass(frozen=True)
class Context:
    keyring: crypto.Keyring
    ttl: domain.OfferTtl
    pseudonym_key: bytes


class NotFound(Exception):
    pass


def _now() -> datetime:
    return datetime.now(timezone.utc)


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


def _store_subject(session: Session, ctx: Context, subject: dict[str, Any],
                   location: dict[str, float], now: datetime) -> tuple[str, bytes]:
    subject_id = str(uuid.uuid4())
    dek = crypto.new_data_key()
    row: dict[str, Any] = {"id": subject_id, "wrapped_key": ctx.keyring.wrap(dek, subject_id),
                           "key_version": 1, "created_at": now}
    for name in PII_FIELDS:
        value = subject.get(name)
        if value is not None:
            row[f"{name}_ct"] = crypto.encrypt_field(dek, str(value), table="subjects",
                                                     column=name, row_id=subject_id, key_version=1)
    row["location_ct"] = crypto.encrypt_field(dek, f"{location['lat']},{location['lon']}",
                                              table="subjects", column="location",
                                              row_id=subject_id, key_version=1)
    session.execute(subjects.insert().values(**row))
    return subject_id, dek


def submit_referral(session: Session, ctx: Context, principal: Principal,
                    body: dict[str, Any]) -> dict[str, Any]:
    """Store a new referral (PII encrypted) and emit ``referral.submitted``."""
    now = _now()
    referral_id = str(uuid.uuid4())
    subject_id, dek = _store_subject(session, ctx, body["subject"], body["location"], now)
    coarse = geo.coarsen(body["location"]["lat"], body["location"]["lon"])
    notes = body.get("notes")
    row = dict(
        id=referral_id, short_id=domain.short_id(referral_id), subject_id=subject_id,
        need=body["need"], urgency=body["urgency"], status="submitted",
        agency_id=principal.agency, officer_sub=principal.sub,
        officer_ref=crypto.blind_index(ctx.pseudonym_key, principal.sub, purpose="officer"),
        geohash=coarse["geohash"], coarse_lat=coarse["lat"], coarse_lon=coarse["lon"],
        eligibility=_eligibility(body, now.date()), created_at=now, updated_at=now,
        notes_ct=None if not notes else crypto.encrypt_field(
            dek, notes, table="referrals", column="notes", row_id=referral_id, key_version=1),
    )
    session.execute(referrals.insert().values(**row))
    consent = body["consent"]
    session.execute(consents.insert().values(
        referral_id=referral_id, share_with_provider=consent["share_with_provider"],
        referrer_updates=consent["referrer_updates"],
        contact_methods=sorted(set(consent.get("contact_methods", []))),
        obtained_via=consent["obtained_via"], captured_by=principal.sub, captured_at=now,
        expires_at=consent.get("expires_at")))
    session.execute(timeline.insert().values(referral_id=referral_id, from_status=None,
                                             to_status="submitted", actor_role="officer",
                                             occurred_at=now))
    outbox.emit(session, events.REFERRAL_SUBMITTED, subject=referral_id, source=SOURCE, data={
        "referral_id": referral_id, "short_id": row["short_id"], "need": row["need"],
        "urgency": row["urgency"], "coarse_location": coarse,
        "eligibility": {k: v for k, v in row["eligibility"].items() if v is not None},
        "consent": _consent_summary(consent), "agency_id": principal.agency,
        "officer_ref": row["officer_ref"], "submitted_at": now,
    })
    return view_for(session, ctx, principal, referral_id)


def _consent_summary(consent: dict[str, Any]) -> dict[str, Any]:
    return {"share_with_provider": bool(consent["share_with_provider"]),
            "referrer_updates": consent["referrer_updates"],
            "contact_methods": sorted(set(consent.get("contact_methods", [])))}


def current_consent(session: Session, referral_id: str) -> dict[str, Any]:
    row = session.execute(select(consents).where(consents.c.referral_id == referral_id)
                          .order_by(consents.c.id.desc()).limit(1)).mappings().first()
    if row is None:
        raise NotFound(referral_id)
    return dict(row)


def _status_event(session: Session, ref: Any, *, from_status: str | None, to_status: str,
                  actor_role: str, offer: dict[str, Any] | None = None,
                  reason_code: str | None = None, outcome_code: str | None = None,
                  proposal_id: str | None = None, now: datetime) -> None:
    consent = current_consent(session, ref.id)
    session.execute(timeline.insert().values(
        referral_id=ref.id, from_status=from_status, to_status=to_status, reason_code=reason_code,
        outcome_code=outcome_code, actor_role=actor_role,
        offer_id=offer["offer_id"] if offer else None, occurred_at=now))
    outbox.emit(session, events.REFERRAL_STATUS_CHANGED, subject=ref.id, source=SOURCE, data={
        "referral_id": ref.id, "short_id": ref.short_id, "need": ref.need,
        "urgency": ref.urgency, "agency_id": ref.agency_id, "officer_ref": ref.officer_ref,
        "from_status": from_status, "to_status": to_status, "offer": offer,
        "reason_code": reason_code, "outcome_code": outcome_code, "actor_role": actor_role,
        "referrer_updates": consent["referrer_updates"], "proposal_id": proposal_id,
        "occurred_at": now,
    })


def _load_for_update(session: Session, referral_id: str) -> Any:
    ref = session.execute(locked(session, select(referrals).where(referrals.c.id == referral_id))
                          ).first()
    if ref is None:
        raise PermanentError("proposal for an unknown referral")
    return ref


def on_routing_proposed(session: Session, ctx: Context, env: events.Envelope) -> None:
    """Answer a proposal exactly once: make the offer, or void the proposal."""
    d = env.data
    ref = _load_for_update(session, d["referral_id"])
    now = _now()
    tried = session.execute(select(offers.c.id).where(
        offers.c.referral_id == ref.id, offers.c.service_id == d["service_id"])).first()
    routable = ref.status in ("submitted", "unmatched") and tried is None
    offer = {"offer_id": str(uuid.uuid4()), "service_id": d["service_id"],
             "organization_id": d["organization_id"], "attempt": d["attempt"],
             "expires_at": ctx.ttl.expires_at(ref.urgency, now),
             "status": "open" if routable else "withdrawn"}
    if not routable:
        _status_event(session, ref, from_status=ref.status, to_status=ref.status,
                      actor_role="system", offer=offer, reason_code="proposal_void",
                      proposal_id=env.id, now=now)
        return
    session.execute(offers.insert().values(
        id=offer["offer_id"], referral_id=ref.id, service_id=offer["service_id"],
        organization_id=offer["organization_id"], attempt=offer["attempt"],
        proposal_id=env.id, status="open", expires_at=offer["expires_at"], created_at=now))
    session.execute(update(referrals).where(referrals.c.id == ref.id)
                    .values(status=domain.transition(ref.status, "offered"), updated_at=now))
    _status_event(session, ref, from_status=ref.status, to_status="offered", actor_role="system",
                  offer=offer, proposal_id=env.id, now=now)


def on_routing_exhausted(session: Session, ctx: Context, env: events.Envelope) -> None:
    ref = _load_for_update(session, env.data["referral_id"])
    if ref.status != "submitted":
        return  # already placed or closed: nothing to record
    now = _now()
    session.execute(update(referrals).where(referrals.c.id == ref.id)
                    .values(status="unmatched", updated_at=now))
    _status_event(session, ref, from_status="submitted", to_status="unmatched",
                  actor_role="system", reason_code=None, now=now)


# ---- queries -------------------------------------------------------------------------------

def _open_or_accepted_offer(session: Session, referral_id: str, org: str | None) -> Any:
    cond = [offers.c.referral_id == referral_id, offers.c.status.in_(("open", "accepted"))]
    if org is not None:
        cond.append(offers.c.organization_id == org)
    return session.execute(select(offers).where(*cond).order_by(offers.c.created_at.desc())
                           ).first()


def _visible(principal: Principal) -> Any:
    if principal.role == "officer":
        return referrals.c.officer_sub == principal.sub
    if principal.role == "supervisor":
        return referrals.c.agency_id == principal.agency
    if principal.role == "provider":
        mine = select(offers.c.referral_id).where(
            offers.c.organization_id == principal.org,
            offers.c.status.in_(("open", "accepted")))
        return referrals.c.id.in_(mine)
    return false()  # admins manage the system, not cases


def list_for(session: Session, ctx: Context, principal: Principal, *, limit: int, offset: int
             ) -> tuple[list[dict[str, Any]], int]:
    cond = _visible(principal)
    total = session.execute(select(func.count()).select_from(referrals).where(cond)).scalar_one()
    rows = session.execute(select(referrals).where(cond)
                           .order_by(referrals.c.created_at.desc(), referrals.c.id)
                           .limit(limit).offset(offset)).all()
    return [_render(session, ctx, principal, ref) for ref in rows], int(total)


def view_for(session: Session, ctx: Context, principal: Principal, referral_id: str
             ) -> dict[str, Any]:
    """The referral as ``principal`` may see it under the resident's consent."""
    ref = session.execute(select(referrals).where(referrals.c.id == referral_id,
                                                  _visible(principal))).first()
    if ref is None:
        raise NotFound(referral_id)
    return _render(session, ctx, principal, ref)


def _render(session: Session, ctx: Context, principal: Principal, ref: Any) -> dict[str, Any]:
    """One visible referral row as ``principal`` may see it."""
    consent = current_consent(session, ref.id)
    base = {"id": ref.id, "short_id": ref.short_id, "need": ref.need, "urgency": ref.urgency,
            "created_at": ref.created_at}
    if principal.role == "officer":
        return {**base, "status": domain.status_for_referrer(ref.status,
                                                             consent["referrer_updates"])}
    view = {**base, "status": ref.status, "agency_id": ref.agency_id,
            "coarse_location": {"geohash": ref.geohash, "lat": ref.coarse_lat,
                                "lon": ref.coarse_lon},
            "eligibility": ref.eligibility, "updated_at": ref.updated_at}
    if principal.role == "provider":
        offer = _open_or_accepted_offer(session, ref.id, principal.org)
        view["offer"] = None if offer is None else {
            "id": offer.id, "service_id": offer.service_id, "status": offer.status,
            "expires_at": offer.expires_at, "attempt": offer.attempt}
        view["contact"] = None
        if offer is not None and consent["share_with_provider"]:
            view["contact"] = {**_decrypt_subject(session, ctx, ref.subject_id),
                               "contact_methods": consent["contact_methods"]}
    return view


def _decrypt_subject(session: Session, ctx: Context, subject_id: str) -> dict[str, Any]:
    row = session.execute(select(subjects).where(subjects.c.id == subject_id)).first()
    if row is None or row.wrapped_key is None:
        return {}
    dek = ctx.keyring.unwrap(row.wrapped_key, subject_id)
    out = {}
    for name in PII_FIELDS:
        token = getattr(row, f"{name}_ct")
        if token:
            out[name] = crypto.decrypt_field(dek, token, table="subjects", column=name,
                                             row_id=subject_id, key_version=row.key_version)
    return out

