"""notifications use cases. Handlers take the open session and never commit."""
from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.orm import Session

from servicekit import events
from servicekit.auth import Principal
from servicekit.db import upsert

from . import domain
from .tables import notifications, org_view

FEED_COLUMNS = (notifications.c.id, notifications.c.kind, notifications.c.channel,
                notifications.c.referral_id, notifications.c.short_id, notifications.c.title,
                notifications.c.body, notifications.c.link, notifications.c.created_at,
                notifications.c.read_at)


class NotFound(Exception):
    pass


def _now() -> datetime:
    return datetime.now(UTC)


# ---- events ----------------------------------------------------------------------------------

def on_referral_event(session: Session, env: events.Envelope) -> None:
    """Store the notifications an event causes; a redelivered event adds none."""
    drafts = domain.notifications_for(env.type, env.data)
    if not drafts:
        return
    now = _now()
    rows = [{**asdict(d), "id": str(uuid.uuid4()), "event_id": env.id, "created_at": now}
            for d in drafts]
    key = [notifications.c.event_id, notifications.c.recipient_kind,
           notifications.c.recipient_id, notifications.c.channel]
    session.execute(upsert(session, notifications).values(rows)
                    .on_conflict_do_nothing(index_elements=key))


def on_consent_changed(session: Session, env: events.Envelope) -> None:
    """Revoking referrer updates also withdraws what the officer was already told (§5)."""
    if domain.referrer_may_keep(env.data["consent"]["referrer_updates"]):
        return
    session.execute(delete(notifications).where(
        notifications.c.referral_id == env.data["referral_id"],
        notifications.c.recipient_kind == "user"))


def on_referral_erased(session: Session, env: events.Envelope) -> None:
    """Erasure: drop the stored text of every notification about the referral."""
    session.execute(update(notifications)
                    .where(notifications.c.referral_id == env.data["referral_id"])
                    .values(title=None, body=None))


def on_service_upserted(session: Session, env: events.Envelope) -> None:
    """Keep the organization's notification channels; an older snapshot never wins."""
    d = env.data
    stmt = upsert(session, org_view).values(
        organization_id=d["organization_id"], channels=sorted(set(d["notification_channels"])),
        updated_at=events.parse_time(d["updated_at"]))
    session.execute(stmt.on_conflict_do_update(
        index_elements=[org_view.c.organization_id],
        set_={"channels": stmt.excluded.channels, "updated_at": stmt.excluded.updated_at},
        where=org_view.c.updated_at <= stmt.excluded.updated_at))


# ---- queries ---------------------------------------------------------------------------------

def recipient_of(principal: Principal) -> tuple[str, str] | None:
    """The recipient whose feed ``principal`` reads, or None when there is none (yet).

    Officers get None: their notifications are addressed to the pseudonym referral-intake
    computes (HMAC of ``sub`` under a key from its PII keyring), which this service cannot
    derive. See README "Officer feed".
    """
    if principal.role == "provider" and principal.org:
        return "org", principal.org
    if principal.role == "supervisor" and principal.agency:
        return "agency_supervisors", principal.agency
    return None


def _mine(recipient: tuple[str, str]) -> Any:
    return and_(notifications.c.recipient_kind == recipient[0],
                notifications.c.recipient_id == recipient[1],
                notifications.c.channel == domain.IN_APP)


def feed_for(session: Session, principal: Principal, *, unread_only: bool, limit: int,
             offset: int) -> tuple[list[dict[str, Any]], int]:
    """The caller's in-app notifications, newest first, and how many there are in all."""
    recipient = recipient_of(principal)
    if recipient is None:
        return [], 0
    cond = _mine(recipient)
    if unread_only:
        cond = and_(cond, notifications.c.read_at.is_(None))
    total = session.execute(select(func.count()).select_from(notifications).where(cond)
                            ).scalar_one()
    rows = session.execute(select(*FEED_COLUMNS).where(cond)
                           .order_by(notifications.c.created_at.desc(), notifications.c.id)
                           .limit(limit).offset(offset)).mappings().all()
    return [dict(r) for r in rows], int(total)


def mark_read(session: Session, principal: Principal, notification_id: str) -> None:
    """Mark one of the caller's notifications read (the first read time is kept).

    Raises NotFound when the notification does not exist or is someone else's.
    """
    recipient = recipient_of(principal)
    if recipient is None:
        raise NotFound(notification_id)
    marked = session.execute(
        update(notifications)
        .where(notifications.c.id == notification_id, _mine(recipient))
        .values(read_at=func.coalesce(notifications.c.read_at, _now()))
        .returning(notifications.c.id)).first()
    if marked is None:
        raise NotFound(notification_id)
