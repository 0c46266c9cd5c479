"""Timers run by the worker: offer expiry (answered by re-routing) and the first-contact
deadline. A breach is recorded once (unique row) and emitted as ``referral.sla_breached``.

Every check re-reads its referral under a row lock, so several workers may run the timers
at once: the domain refuses to expire an offer twice and the unique breach row refuses a
second breach.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from servicekit import events, logs, outbox
from servicekit.db import Database, upsert

from . import domain
from .handlers import SOURCE, Context, apply, load_for_update
from .tables import offers, referrals, sla_breaches

log = logging.getLogger(__name__)


def _breach(session: Session, ref: Any, sla: str, due_at: datetime, now: datetime,
            offer_id: str = "", organization_id: str | None = None) -> bool:
    inserted: int = session.execute(
        upsert(session, sla_breaches).values(referral_id=ref.id, sla=sla, offer_id=offer_id,
                                             due_at=due_at, occurred_at=now)
        .on_conflict_do_nothing(index_elements=["referral_id", "sla", "offer_id"])
    ).rowcount  # type: ignore[attr-defined]
    if not inserted:
        return False
    outbox.emit(session, events.REFERRAL_SLA_BREACHED, subject=ref.id, source=SOURCE, data={
        "referral_id": ref.id, "short_id": ref.short_id, "agency_id": ref.agency_id,
        "sla": sla, "need": ref.need, "urgency": ref.urgency, "due_at": due_at,
        "occurred_at": now, "organization_id": organization_id})
    return True


def expire_offers(db: Database, ctx: Context, now: datetime, batch: int = 200) -> int:
    """Expire every open offer past its deadline; the referral goes back to routing."""
    with db.uow() as uow:
        due = uow.session.execute(select(offers.c.referral_id).where(
            offers.c.status == "open", offers.c.expires_at <= now)
            .order_by(offers.c.expires_at).limit(batch)).scalars().all()
    done = 0
    for referral_id in due:
        with db.transaction() as session:
            ref = load_for_update(session, referral_id)
            if ref is None:
                continue
            _, changes = apply(session, ctx, ref, domain.Expire(now), now=now)
            for change in changes:
                if change.offer is not None:
                    _breach(session, ref, "offer_response", change.offer.expires_at, now,
                            change.offer.id, change.offer.organization_id)
                    done += 1
    return done


def first_contact_breaches(db: Database, ctx: Context, now: datetime, batch: int = 200) -> int:
    """Accepted cases with no recorded contact by their deadline: one breach each."""
    already = select(sla_breaches.c.id).where(and_(
        sla_breaches.c.referral_id == referrals.c.id, sla_breaches.c.sla == "first_contact"))
    with db.uow() as uow:
        due = uow.session.execute(select(referrals.c.id).where(
            referrals.c.first_contact_due_at <= now, referrals.c.first_contact_at.is_(None),
            referrals.c.status.in_(tuple(domain.ACTIVE_CASE)), ~already.exists())
            .limit(batch)).scalars().all()
    done = 0
    for referral_id in due:
        with db.transaction() as session:
            ref = load_for_update(session, referral_id)
            if ref is None or ref.first_contact_at is not None \
                    or ref.status not in domain.ACTIVE_CASE:
                continue
            org = session.execute(select(offers.c.organization_id).where(
                offers.c.referral_id == ref.id, offers.c.status == "accepted")).scalar()
            done += _breach(session, ref, "first_contact", ref.first_contact_due_at, now,
                            organization_id=org)
    return done


def timer_loop(db: Database, ctx: Context, interval_s: float,
               clock: Callable[[], datetime] | None = None) -> Callable[[threading.Event], None]:
    """The worker component: run both checks every ``interval_s`` until stopped."""
    now_fn = clock or (lambda: datetime.now(UTC))

    def lifecycle_timers(stop: threading.Event) -> None:
        while not stop.is_set():
            now = now_fn()
            expired = expire_offers(db, ctx, now)
            breached = first_contact_breaches(db, ctx, now)
            if expired or breached:
                log.info("timers fired", extra=logs.log_fields(expired=expired,
                                                               first_contact=breached))
            stop.wait(interval_s)

    return lifecycle_timers
