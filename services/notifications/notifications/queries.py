"""notifications HTTP use cases: feeds, preferences, webhooks, the delivery log.

Handlers take the open session and never commit. Callers are identified by
:class:`Caller`: who the token says they are, plus the officer pseudonym (officers'
notifications are addressed to it, never to the login id).
"""
from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import Session

from servicekit import crypto
from servicekit.auth import Principal
from servicekit.db import upsert

from . import domain
from .tables import deliveries, delivery_attempts, notifications, preferences, webhooks

FEED_COLUMNS = (notifications.c.id, notifications.c.kind, notifications.c.channel,
                notifications.c.referral_id, notifications.c.short_id, notifications.c.title,
                notifications.c.body, notifications.c.link, notifications.c.created_at,
                notifications.c.read_at)
DELIVERY_COLUMNS = (deliveries.c.id, deliveries.c.notification_id, deliveries.c.channel,
                    deliveries.c.target_kind, deliveries.c.target_id, deliveries.c.status,
                    deliveries.c.attempt, deliveries.c.error, deliveries.c.last_status_code,
                    deliveries.c.next_attempt_at, deliveries.c.created_at,
                    deliveries.c.updated_at)


class NotFound(Exception):
    pass


class Conflict(Exception):
    pass


@dataclass(frozen=True)
class Caller:
    principal: Principal
    pseudonym_key: bytes

    @property
    def user_id(self) -> str:
        """Officers are known by their pseudonym; everyone else by the token's subject."""
        if self.principal.role == "officer":
            return crypto.officer_pseudonym(self.pseudonym_key, self.principal.sub)
        return self.principal.sub

    @property
    def recipient(self) -> tuple[str, str] | None:
        """The recipient whose feed the caller reads (None: no feed for this role)."""
        p = self.principal
        if p.role == "provider" and p.org:
            return "org", p.org
        if p.role == "supervisor" and p.agency:
            return "agency_supervisors", p.agency
        if p.role == "officer":
            return "user", self.user_id
        return None


def _now() -> datetime:
    return datetime.now(UTC)


# ---- feed ------------------------------------------------------------------------------------

def feed_condition(session: Session, caller: Caller) -> Any:
    """SQL condition selecting the caller's in-app notifications (None: they have none)."""
    recipient = caller.recipient
    if recipient is None:
        return None
    cond = and_(notifications.c.recipient_kind == recipient[0],
                notifications.c.recipient_id == recipient[1],
                notifications.c.channel == domain.IN_APP)
    channels = session.execute(select(preferences.c.channels).where(
        preferences.c.user_id == caller.user_id)).scalar()
    if channels is not None and domain.IN_APP not in channels:  # opted out of in-app ...
        always = domain.ALWAYS_IN_APP_FOR_PROVIDERS if recipient[0] == "org" else frozenset()
        cond = and_(cond, notifications.c.kind.in_(sorted(always)))  # ... but offers stay
    return cond


def feed_for(session: Session, caller: Caller, *, unread_only: bool, limit: int,
             offset: int) -> tuple[list[dict[str, Any]], int]:
    """The caller's in-app notifications, newest first, and how many there are in all."""
    cond = feed_condition(session, caller)
    if cond is None:
        return [], 0
    if unread_only:
        cond = and_(cond, notifications.c.read_at.is_(None))
    total = session.execute(select(func.count()).select_from(notifications).where(cond)
                            ).scalar_one()
    rows = session.execute(select(*FEED_COLUMNS).where(cond)
                           .order_by(notifications.c.created_at.desc(), notifications.c.id)
                           .limit(limit).offset(offset)).mappings().all()
    return [dict(r) for r in rows], int(total)


def mark_read(session: Session, caller: Caller, notification_id: str) -> None:
    """Mark one of the caller's notifications read (the first read time is kept).

    Raises NotFound when the notification does not exist or is someone else's.
    """
    cond = feed_condition(session, caller)
    if cond is None:
        raise NotFound(notification_id)
    marked = session.execute(
        update(notifications).where(notifications.c.id == notification_id, cond)
        .values(read_at=func.coalesce(notifications.c.read_at, _now()))
        .returning(notifications.c.id)).first()
    if marked is None:
        raise NotFound(notification_id)


# ---- preferences -----------------------------------------------------------------------------

def put_preferences(session: Session, caller: Caller, prefs: dict[str, Any]) -> dict[str, Any]:
    """Replace the caller's channel choices."""
    p = caller.principal
    row = {"user_id": caller.user_id, "role": p.role, "organization_id": p.org,
           "agency_id": p.agency, "channels": sorted(set(prefs["channels"])),
           "email": prefs.get("email"), "sms_number": prefs.get("sms_number"),
           "updated_at": _now()}
    stmt = upsert(session, preferences).values(**row)
    session.execute(stmt.on_conflict_do_update(
        index_elements=[preferences.c.user_id],
        set_={k: stmt.excluded[k] for k in row if k != "user_id"}))
    return get_preferences(session, caller)


def get_preferences(session: Session, caller: Caller) -> dict[str, Any]:
    row = session.execute(select(preferences.c.channels, preferences.c.email,
                                 preferences.c.sms_number, preferences.c.updated_at)
                          .where(preferences.c.user_id == caller.user_id)).mappings().first()
    if row is None:  # the default: in-app only
        return {"channels": [domain.IN_APP], "email": None, "sms_number": None,
                "updated_at": None}
    return dict(row)


# ---- webhooks --------------------------------------------------------------------------------

def register_webhook(session: Session, organization_id: str, url: str
                     ) -> tuple[dict[str, Any], bool]:
    """Register ``url`` for the organization with a fresh secret; registering the same URL
    again issues a new secret for the same webhook (a retry never creates a second one).
    Returns the webhook with its secret, and whether it was created."""
    now, secret = _now(), "whsec_" + secrets.token_urlsafe(32)
    stmt = upsert(session, webhooks).values(
        id=str(uuid.uuid4()), organization_id=organization_id, url=url, secret=secret,
        active=True, created_at=now, updated_at=now)
    session.execute(stmt.on_conflict_do_update(
        index_elements=[webhooks.c.organization_id, webhooks.c.url],
        set_={"secret": stmt.excluded.secret, "active": True,
              "updated_at": stmt.excluded.updated_at}))
    row = session.execute(select(webhooks).where(webhooks.c.organization_id == organization_id,
                                                 webhooks.c.url == url)).mappings().one()
    return dict(row), row["created_at"] == row["updated_at"]


def list_webhooks(session: Session, organization_id: str | None) -> list[dict[str, Any]]:
    query = select(webhooks.c.id, webhooks.c.organization_id, webhooks.c.url,
                   webhooks.c.active, webhooks.c.created_at).order_by(webhooks.c.created_at)
    if organization_id is not None:
        query = query.where(webhooks.c.organization_id == organization_id)
    return [dict(r) for r in session.execute(query).mappings()]


def deactivate_webhook(session: Session, webhook_id: str, organization_id: str | None) -> None:
    cond = webhooks.c.id == webhook_id
    if organization_id is not None:
        cond = and_(cond, webhooks.c.organization_id == organization_id)
    done = session.execute(update(webhooks).where(cond).values(active=False, updated_at=_now())
                           .returning(webhooks.c.id)).first()
    if done is None:
        raise NotFound(webhook_id)


# ---- delivery log (admin) --------------------------------------------------------------------

def list_deliveries(session: Session, status: str | None, limit: int, offset: int
                    ) -> tuple[list[dict[str, Any]], int]:
    cond = deliveries.c.status == status if status else deliveries.c.id.is_not(None)
    total = session.execute(select(func.count()).select_from(deliveries).where(cond)
                            ).scalar_one()
    rows = session.execute(select(*DELIVERY_COLUMNS).where(cond)
                           .order_by(deliveries.c.updated_at.desc(), deliveries.c.id)
                           .limit(limit).offset(offset)).mappings().all()
    return [dict(r) for r in rows], int(total)


def get_delivery(session: Session, delivery_id: str) -> dict[str, Any]:
    row = session.execute(select(*DELIVERY_COLUMNS).where(deliveries.c.id == delivery_id)
                          ).mappings().first()
    if row is None:
        raise NotFound(delivery_id)
    attempts = session.execute(
        select(delivery_attempts.c.attempt, delivery_attempts.c.status,
               delivery_attempts.c.error, delivery_attempts.c.status_code,
               delivery_attempts.c.next_attempt_at, delivery_attempts.c.attempted_at)
        .where(delivery_attempts.c.delivery_id == delivery_id)
        .order_by(delivery_attempts.c.attempt)).mappings().all()
    return {**dict(row), "attempts": [dict(a) for a in attempts]}


def retry_delivery(session: Session, delivery_id: str) -> dict[str, Any]:
    """Manual retry of a failed delivery: due now, with a fresh attempt budget."""
    done = session.execute(
        update(deliveries)
        .where(deliveries.c.id == delivery_id, deliveries.c.status == "failed")
        .values(status="pending", next_attempt_at=_now(), retry_base=deliveries.c.attempt,
                updated_at=_now())
        .returning(deliveries.c.id)).first()
    if done is None:
        get_delivery(session, delivery_id)  # NotFound when it does not exist
        raise Conflict(delivery_id)
    return get_delivery(session, delivery_id)
