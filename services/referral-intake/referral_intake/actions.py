"""Commands people send through the api: provider answers and case progress, cancellation,
supervisor re-routing and assignment, consent changes, erasure and break-glass access.

Each locks the referral row first, checks that the caller may act on it (a referral the
caller may not see is ``NotFound``, answered 404), then lets the domain decide.
"""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from servicekit import events, outbox
from servicekit.auth import Principal

from . import audit, domain, vault
from .handlers import (
    SOURCE,
    Context,
    Invalid,
    NotFound,
    _now,
    apply,
    consent_summary,
    current_consent,
    is_erased,
    load_for_update,
    subject_referrals,
)
from .tables import consents, offers, pii_grants, services


def _own(session: Session, principal: Principal, referral_id: str) -> Any:
    """The locked referral if ``principal`` may act on it as officer or supervisor."""
    ref = load_for_update(session, referral_id)
    if ref is None:
        raise NotFound(referral_id)
    if principal.role == "officer" and ref.officer_sub == principal.sub:
        return ref
    if principal.role == "supervisor" and ref.agency_id == principal.agency:
        return ref
    raise NotFound(referral_id)


def _offered_to(session: Session, principal: Principal, referral_id: str) -> Any:
    """The locked referral if the provider's organization ever held an offer for it."""
    ref = load_for_update(session, referral_id)
    held = ref is not None and principal.org and session.execute(select(offers.c.id).where(
        offers.c.referral_id == referral_id, offers.c.organization_id == principal.org)).first()
    if not held:
        raise NotFound(referral_id)
    return ref


def _done(session: Session, ctx: Context, principal: Principal, referral_id: str
          ) -> dict[str, Any]:
    from . import views

    return views.view_for(session, ctx, principal, referral_id)


def accept(session: Session, ctx: Context, principal: Principal, referral_id: str
           ) -> dict[str, Any]:
    now = _now()
    ref = _offered_to(session, principal, referral_id)
    apply(session, ctx, ref, domain.Accept(str(principal.org), now), now=now)
    return _done(session, ctx, principal, referral_id)


def decline(session: Session, ctx: Context, principal: Principal, referral_id: str,
            reason: str) -> dict[str, Any]:
    now = _now()
    ref = _offered_to(session, principal, referral_id)
    after, _ = apply(session, ctx, ref, domain.Decline(str(principal.org), reason, now), now=now)
    offer = next(o for o in after.offers if o.organization_id == principal.org
                 and o.status == "declined" and o.reason_code == reason)
    return {"id": referral_id, "offer": {"id": offer.id, "service_id": offer.service_id,
                                         "status": offer.status, "expires_at": offer.expires_at,
                                         "attempt": offer.attempt}}


def progress(session: Session, ctx: Context, principal: Principal, referral_id: str,
             status: str, note: str | None) -> dict[str, Any]:
    now = _now()
    ref = _offered_to(session, principal, referral_id)
    note_ct = _seal_note(session, ctx, principal, ref, note, now)
    apply(session, ctx, ref, domain.Progress(str(principal.org), status), now=now,
          note_ct=note_ct)
    return _done(session, ctx, principal, referral_id)


def close(session: Session, ctx: Context, principal: Principal, referral_id: str,
          outcome: str, outcome_code: str, note: str | None) -> dict[str, Any]:
    now = _now()
    ref = _offered_to(session, principal, referral_id)
    note_ct = _seal_note(session, ctx, principal, ref, note, now)
    apply(session, ctx, ref, domain.Close(str(principal.org), outcome, outcome_code), now=now,
          note_ct=note_ct)
    return _done(session, ctx, principal, referral_id)


def _seal_note(session: Session, ctx: Context, principal: Principal, ref: Any,
               note: str | None, now: datetime) -> str | None:
    """Progress notes are narrative PII: encrypted under the subject's key, write audited.
    After erasure there is no key, so a note is dropped rather than stored in clear."""
    if not note:
        return None
    dek = vault.data_key(session, ctx.keysource, ref.subject_id)
    if dek is None:
        return None
    token = vault.seal(dek, note, "timeline", "note", ref.id)
    audit.record(session, ctx.audit_key, actor=principal, action="write", purpose="case_note",
                 fields=["note"], referral_id=ref.id, subject_id=ref.subject_id, now=now)
    return token


def cancel(session: Session, ctx: Context, principal: Principal, referral_id: str
           ) -> dict[str, Any]:
    now = _now()
    ref = _own(session, principal, referral_id)
    apply(session, ctx, ref, domain.Cancel(principal.role), now=now)
    return _done(session, ctx, principal, referral_id)


def enter_in_error(session: Session, ctx: Context, principal: Principal, referral_id: str
                   ) -> dict[str, Any]:
    now = _now()
    ref = _own(session, principal, referral_id)
    apply(session, ctx, ref, domain.EnterInError(), now=now)
    return _done(session, ctx, principal, referral_id)


def reroute(session: Session, ctx: Context, principal: Principal, referral_id: str
            ) -> dict[str, Any]:
    now = _now()
    ref = _own(session, principal, referral_id)
    apply(session, ctx, ref, domain.Reroute(), now=now)
    return _done(session, ctx, principal, referral_id)


def assign(session: Session, ctx: Context, principal: Principal, referral_id: str,
           service_id: str, organization_id: str | None) -> dict[str, Any]:
    """Manual assignment: an offer to a service the registry announced (or the caller names
    with its organization)."""
    now = _now()
    ref = _own(session, principal, referral_id)
    known = session.execute(select(services).where(services.c.id == service_id)).first()
    if known is not None and known.removed:
        raise Invalid("service_id", "That service was removed from the directory.")
    org = known.organization_id if known is not None else organization_id
    if org is None:
        raise Invalid("service_id", "Unknown service; give organization_id as well.")
    if known is not None and organization_id not in (None, org):
        raise Invalid("organization_id", "The service belongs to another organization.")
    attempts = session.execute(select(offers.c.attempt).where(
        offers.c.referral_id == ref.id)).scalars().all()
    apply(session, ctx, ref, domain.Assign(
        offer_id=str(uuid.uuid4()), service_id=service_id, organization_id=org,
        attempt=max(attempts, default=0) + 1, expires_at=ctx.ttl.expires_at(ref.urgency, now)),
        now=now)
    return _done(session, ctx, principal, referral_id)


def change_consent(session: Session, ctx: Context, principal: Principal, referral_id: str,
                   body: dict[str, Any]) -> dict[str, Any]:
    """A new consent record (history is kept); revoking sharing withdraws open offers."""
    now = _now()
    ref = _own(session, principal, referral_id)
    session.execute(consents.insert().values(
        referral_id=ref.id, share_with_provider=body["share_with_provider"],
        referrer_updates=body["referrer_updates"],
        contact_methods=sorted(set(body.get("contact_methods", []))),
        obtained_via=body["obtained_via"], captured_by=principal.sub, captured_at=now,
        expires_at=body.get("expires_at")))
    outbox.emit(session, events.REFERRAL_CONSENT_CHANGED, subject=ref.id, source=SOURCE, data={
        "referral_id": ref.id, "consent": consent_summary(body), "actor_role": principal.role,
        "occurred_at": now, "short_id": ref.short_id, "agency_id": ref.agency_id,
        "officer_ref": ref.officer_ref,
    })
    if not body["share_with_provider"]:
        apply(session, ctx, ref, domain.RevokeSharing(), now=now)
    return consent_history(session, ctx, principal, referral_id)


def consent_history(session: Session, ctx: Context, principal: Principal, referral_id: str
                    ) -> dict[str, Any]:
    rows = session.execute(select(consents).where(consents.c.referral_id == referral_id)
                           .order_by(consents.c.id)).mappings().all()
    history = [{"share_with_provider": r["share_with_provider"],
                "referrer_updates": r["referrer_updates"],
                "contact_methods": r["contact_methods"], "obtained_via": r["obtained_via"],
                "captured_at": r["captured_at"], "expires_at": r["expires_at"]} for r in rows]
    return {"referral_id": referral_id, "current": history[-1], "history": history}


def erase_subject(session: Session, ctx: Context, principal: Principal, referral_id: str
                  ) -> dict[str, Any]:
    """Crypto-shred the resident: every referral sharing the subject loses its PII and gets
    its own ``referral.erased``. Repeating it is harmless (no second event)."""
    now = _now()
    ref = _own(session, principal, referral_id)
    if not vault.erase(session, ctx.audit_key, principal, ref.subject_id, ref.id, now):
        return {"subject_erased": True, "referral_ids": []}
    affected = [r.id for r in subject_referrals(session, ref.subject_id)]
    for rid in affected:
        outbox.emit(session, events.REFERRAL_ERASED, subject=rid, source=SOURCE,
                    data={"referral_id": rid, "occurred_at": now})
    return {"subject_erased": True, "referral_ids": affected}


def grant_pii_access(session: Session, ctx: Context, principal: Principal, referral_id: str,
                     reason: str) -> dict[str, Any]:
    """Break-glass: the supervisor reads the resident's PII now and for the next minutes."""
    now = _now()
    ref = _own(session, principal, referral_id)
    dek = vault.data_key(session, ctx.keysource, ref.subject_id)
    if dek is None or is_erased(session, ref.subject_id):
        audit.record(session, ctx.audit_key, actor=principal, action="break_glass",
                     purpose="break_glass", referral_id=ref.id, subject_id=ref.subject_id,
                     outcome="erased", now=now)
        raise Invalid("referral_id", "The resident's data was erased; nothing to open.")
    grant_id = str(uuid.uuid4())
    expires = now + ctx.break_glass
    session.execute(pii_grants.insert().values(
        id=grant_id, referral_id=ref.id, supervisor_sub=principal.sub,
        reason_ct=vault.seal(dek, reason, "pii_grants", "reason", grant_id),
        granted_at=now, expires_at=expires))
    audit.record(session, ctx.audit_key, actor=principal, action="break_glass",
                 purpose="break_glass", referral_id=ref.id, subject_id=ref.subject_id,
                 fields=["reason"], now=now)
    pii = vault.read_subject(session, ctx.keysource, ctx.audit_key, principal,
                             referral_id=ref.id, subject_id=ref.subject_id,
                             purpose="break_glass", with_location=True, with_notes=True)
    return {"referral_id": ref.id, "grant_id": grant_id, "expires_at": expires, "pii": pii,
            "consent": consent_summary(current_consent(session, ref.id))}
