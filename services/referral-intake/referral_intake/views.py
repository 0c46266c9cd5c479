"""What each role sees of a referral (the consent matrix, DESIGN.md §5).

``visible_fields`` is pure: role × consent × status × relation → the set of fields shown;
the rendering functions only fill them in. Officers see their own referrals through the
resident's ``referrer_updates`` and never the resident's PII; providers see contact
details only with ``share_with_provider``, only while their organization's offer is open
or accepted, and only the channels in ``contact_methods``; supervisors see de-identified
records unless a break-glass grant is active. Every decrypting read is audited.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, false, func, select
from sqlalchemy.orm import Session

from servicekit.auth import Principal

from . import domain, vault
from .handlers import Context, NotFound, _now, current_consent
from .tables import offers, pii_grants, referrals, services, timeline

BASE = frozenset({"id", "short_id", "need", "urgency", "status", "created_at"})
DEIDENTIFIED = frozenset({"agency_id", "coarse_location", "eligibility", "updated_at"})
IDENTITY = ("given_name", "family_name", "birth_date")
CHANNEL_FIELDS = {"phone": ("phone",), "sms": ("phone",), "email": ("email",),
                  "in_person": ("location",)}


def visible_fields(role: str, consent: dict[str, Any], status: str, *,
                   offer_status: str | None = None, break_glass: bool = False
                   ) -> frozenset[str]:
    """Top-level fields (and ``contact.*`` entries) ``role`` may see. Pure."""
    if role == "officer":
        extra = {"consent"}
        if consent["referrer_updates"] == "full":
            extra |= {"provider", "outcome_code"}
        return BASE | extra
    if role == "provider":
        shown = BASE | DEIDENTIFIED | {"offer", "contact", "outcome_code"}
        if consent["share_with_provider"] and offer_status in ("open", "accepted") \
                and status not in domain.TERMINAL:
            shown |= {f"contact.{f}" for f in IDENTITY} | {"contact.contact_methods",
                                                           "contact.notes"}
            for method in consent["contact_methods"]:
                shown |= {f"contact.{f}" for f in CHANNEL_FIELDS[method]}
        return shown
    if role == "supervisor":
        shown = BASE | DEIDENTIFIED | {"offers", "outcome_code", "consent", "pii"}
        if break_glass:
            shown |= {f"pii.{f}" for f in IDENTITY + ("phone", "email", "location", "notes")}
        return shown
    return frozenset()


def officer_status(status: str, consent: dict[str, Any]) -> str:
    return domain.status_for_referrer(status, consent["referrer_updates"])


# ---- queries -------------------------------------------------------------------------------

def visible_cond(principal: Principal) -> Any:
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


def list_for(session: Session, ctx: Context, principal: Principal, *, limit: int, offset: int,
             status: str | None = None) -> tuple[list[dict[str, Any]], int]:
    cond = [visible_cond(principal)]
    if status is not None and principal.role != "officer":
        cond.append(referrals.c.status == status)
    total = session.execute(select(func.count()).select_from(referrals).where(*cond)).scalar_one()
    rows = session.execute(select(referrals).where(*cond)
                           .order_by(referrals.c.created_at.desc(), referrals.c.id)
                           .limit(limit).offset(offset)).all()
    return [render(session, ctx, principal, ref, listing=True) for ref in rows], int(total)


def visible_ref(session: Session, principal: Principal, referral_id: str) -> Any:
    ref = session.execute(select(referrals).where(referrals.c.id == referral_id,
                                                  visible_cond(principal))).first()
    if ref is None:
        raise NotFound(referral_id)
    return ref


def view_for(session: Session, ctx: Context, principal: Principal, referral_id: str
             ) -> dict[str, Any]:
    """The referral as ``principal`` may see it under the resident's consent."""
    return render(session, ctx, principal, visible_ref(session, principal, referral_id))


def _org_offer(session: Session, referral_id: str, org: str | None) -> Any:
    return session.execute(select(offers).where(
        offers.c.referral_id == referral_id, offers.c.organization_id == org,
        offers.c.status.in_(("open", "accepted"))).order_by(offers.c.created_at.desc())).first()


def _active_grant(session: Session, principal: Principal, referral_id: str, now: datetime
                  ) -> Any:
    return session.execute(select(pii_grants.c.expires_at).where(
        pii_grants.c.referral_id == referral_id, pii_grants.c.supervisor_sub == principal.sub,
        pii_grants.c.expires_at > now).order_by(pii_grants.c.expires_at.desc())).first()


def _provider_of(session: Session, referral_id: str) -> dict[str, Any] | None:
    row = session.execute(select(offers.c.service_id, offers.c.organization_id,
                                 services.c.organization_name, services.c.service_name)
                          .select_from(offers.outerjoin(services, and_(
                              services.c.id == offers.c.service_id)))
                          .where(offers.c.referral_id == referral_id,
                                 offers.c.status == "accepted")).first()
    return None if row is None else dict(row._mapping)


def render(session: Session, ctx: Context, principal: Principal, ref: Any,
           listing: bool = False) -> dict[str, Any]:
    """One visible referral row as ``principal`` may see it (decrypting reads audited)."""
    consent = current_consent(session, ref.id)
    full = {"id": ref.id, "short_id": ref.short_id, "need": ref.need, "urgency": ref.urgency,
            "status": ref.status, "created_at": ref.created_at, "agency_id": ref.agency_id,
            "coarse_location": {"geohash": ref.geohash, "lat": ref.coarse_lat,
                                "lon": ref.coarse_lon},
            "eligibility": ref.eligibility, "updated_at": ref.updated_at,
            "outcome_code": ref.outcome_code}
    role = principal.role
    offer_status, grant = None, None
    if role == "officer":
        full["status"] = officer_status(ref.status, consent)
        full["consent"] = _consent_out(consent)
        full["provider"] = _provider_of(session, ref.id)
    elif role == "provider":
        offer = _org_offer(session, ref.id, principal.org)
        offer_status = offer.status if offer is not None else None
        full["offer"] = None if offer is None else {
            "id": offer.id, "service_id": offer.service_id, "status": offer.status,
            "expires_at": offer.expires_at, "attempt": offer.attempt}
    elif role == "supervisor":
        full["consent"] = _consent_out(consent)
        full["offers"] = [{"id": o.id, "service_id": o.service_id, "attempt": o.attempt,
                           "organization_id": o.organization_id, "status": o.status,
                           "reason_code": o.reason_code, "expires_at": o.expires_at}
                          for o in session.execute(select(offers).where(
                              offers.c.referral_id == ref.id).order_by(offers.c.created_at))]
        grant = None if listing else _active_grant(session, principal, ref.id, _now())
    shown = visible_fields(role, consent, ref.status, offer_status=offer_status,
                           break_glass=grant is not None)
    out = {k: v for k, v in full.items() if k in shown}
    if role == "provider":
        out["contact"] = _contact(session, ctx, principal, ref, shown)
    if role == "supervisor":
        out["pii"] = None if grant is None else {
            **vault.read_subject(session, ctx.keysource, ctx.audit_key, principal,
                                 referral_id=ref.id, subject_id=ref.subject_id,
                                 purpose="break_glass", with_location=True, with_notes=True),
            "access_expires_at": grant.expires_at}
    return out


def submitted_view(row: dict[str, Any], consent: dict[str, Any], now: datetime
                   ) -> dict[str, Any]:
    """The officer's view of a referral just submitted, from the values in hand (no reads)."""
    consent = {**consent, "contact_methods": sorted(set(consent.get("contact_methods", []))),
               "captured_at": now}
    full = {"id": row["id"], "short_id": row["short_id"], "need": row["need"],
            "urgency": row["urgency"], "created_at": now,
            "status": officer_status("submitted", consent), "consent": _consent_out(consent),
            "provider": None, "outcome_code": None}
    shown = visible_fields("officer", consent, "submitted")
    return {k: v for k, v in full.items() if k in shown}


def _consent_out(consent: dict[str, Any]) -> dict[str, Any]:
    return {"share_with_provider": consent["share_with_provider"],
            "referrer_updates": consent["referrer_updates"],
            "contact_methods": consent["contact_methods"],
            "obtained_via": consent["obtained_via"], "captured_at": consent["captured_at"]}


def _contact(session: Session, ctx: Context, principal: Principal, ref: Any,
             shown: frozenset[str]) -> dict[str, Any] | None:
    wanted = {f.split(".", 1)[1] for f in shown if f.startswith("contact.")}
    if not wanted:
        return None
    pii = vault.read_subject(session, ctx.keysource, ctx.audit_key, principal,
                             referral_id=ref.id, subject_id=ref.subject_id,
                             purpose="provider_contact", with_location="location" in wanted,
                             with_notes="notes" in wanted)
    if not pii:
        return None  # erased
    contact = {k: v for k, v in pii.items() if k in wanted}
    contact["contact_methods"] = current_consent(session, ref.id)["contact_methods"]
    return contact


def timeline_for(session: Session, ctx: Context, principal: Principal, referral_id: str
                 ) -> list[dict[str, Any]]:
    """The history as the caller may see it: officers through ``referrer_updates``,
    providers only their own offers' entries, supervisors all codes (no notes)."""
    ref = visible_ref(session, principal, referral_id)
    consent = current_consent(session, ref.id)
    rows = session.execute(select(timeline).where(timeline.c.referral_id == ref.id)
                           .order_by(timeline.c.id)).all()
    if principal.role == "officer":
        return _officer_timeline(rows, consent)
    if principal.role == "provider":
        mine = set(session.execute(select(offers.c.id).where(
            offers.c.referral_id == ref.id,
            offers.c.organization_id == principal.org)).scalars())
        rows = [r for r in rows if r.offer_id in mine]
    out = []
    for r in rows:
        entry = {"from_status": r.from_status, "to_status": r.to_status,
                 "reason_code": r.reason_code, "outcome_code": r.outcome_code,
                 "actor_role": r.actor_role, "offer_id": r.offer_id,
                 "occurred_at": r.occurred_at, "has_note": r.note_ct is not None}
        out.append(entry)
    return out


def _officer_timeline(rows: Sequence[Any], consent: dict[str, Any]) -> list[dict[str, Any]]:
    updates = consent["referrer_updates"]
    out: list[dict[str, Any]] = []
    for r in rows:
        shown = domain.status_for_referrer(r.to_status, updates)
        if r.reason_code == "proposal_void" or (out and out[-1]["status"] == shown):
            continue
        entry: dict[str, Any] = {"status": shown, "occurred_at": r.occurred_at}
        if updates == "full":
            entry.update(reason_code=r.reason_code, outcome_code=r.outcome_code)
        out.append(entry)
    return out
