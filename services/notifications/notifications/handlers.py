"""notifications event use cases. Handlers take the open session and never commit.

Each notification is stored once per (event, recipient, in-app channel); the external
channels of that notification (e-mail, webhook, SMS) become rows of the delivery log in the
same transaction, which the dispatcher then works through (dispatch.py).
"""
from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import String, and_, cast, delete, func, literal, or_, select, union_all, update
from sqlalchemy.orm import Session

from servicekit import events
from servicekit.db import upsert

from . import domain
from .tables import (
    deliveries,
    erased_referrals,
    notifications,
    offer_refusals,
    offer_reminders,
    org_view,
    preferences,
    webhooks,
)

_REMINDER_NS = uuid.UUID("1b7c2f0e-8f0a-4a55-9a43-6b1f1f6f2d10")


@dataclass(frozen=True)
class Options:
    """Which external channels this deployment delivers at all."""

    email: bool = True
    sms: bool = False


DEFAULT_OPTIONS = Options()


def _now() -> datetime:
    return datetime.now(UTC)


# ---- events ----------------------------------------------------------------------------------

def on_referral_event(session: Session, env: events.Envelope,
                      options: Options = DEFAULT_OPTIONS) -> None:
    """Store the notifications an event causes; a redelivered event adds none."""
    refusals = 0
    if env.type == events.REFERRAL_STATUS_CHANGED:
        refusals = _record_refusal(session, env.data)
        _track_reminder(session, env.data)
    drafts = domain.notifications_for(env.type, env.data, refusals=refusals)
    store(session, env.id, drafts, options)


def store(session: Session, event_id: str, drafts: list[domain.Draft],
          options: Options = DEFAULT_OPTIONS, now: datetime | None = None) -> int:
    """Insert ``drafts`` (ignoring ones already stored for ``event_id``) and the delivery
    rows of the newly stored ones; returns how many notifications were new.

    Three statements in the common case (look-up, insert, deliveries), because the
    consumer runs one transaction per event and round trips dominate its cost.
    """
    if not drafts:
        return 0
    now = now or _now()
    found = _Lookup.of(session, drafts)
    rows = [{**asdict(d), "id": str(uuid.uuid4()), "event_id": event_id, "created_at": now}
            for d in drafts]
    for row in rows:
        if row["referral_id"] in found.erased:
            row["title"] = row["body"] = None  # text of an erased referral is never kept
    key = [notifications.c.event_id, notifications.c.recipient_kind,
           notifications.c.recipient_id, notifications.c.channel]
    inserted = session.execute(
        upsert(session, notifications).values(rows).on_conflict_do_nothing(index_elements=key)
        .returning(notifications.c.id, notifications.c.recipient_kind,
                   notifications.c.recipient_id, notifications.c.referral_id)).all()
    targets = [t for n in inserted if n.referral_id not in found.erased
               for t in found.targets(n, options)]
    if targets:
        session.execute(upsert(session, deliveries).values([
            {"id": str(uuid.uuid4()), "notification_id": nid, "channel": channel,
             "target_kind": kind, "target_id": target, "status": "pending", "attempt": 0,
             "retry_base": 0, "next_attempt_at": now, "created_at": now, "updated_at": now}
            for nid, channel, kind, target in targets]).on_conflict_do_nothing(
            index_elements=[deliveries.c.notification_id, deliveries.c.channel,
                            deliveries.c.target_id]))
    return len(inserted)


@dataclass
class _Lookup:
    """Everything ``store`` needs to know about some drafts' recipients, in one query:
    erased referrals, organizations' directory channels, active webhooks, users' choices."""

    erased: set[str]
    org_channels: dict[str, list[str]]
    hooks: dict[str, list[str]]
    users: dict[tuple[str, str], list[Any]]

    @classmethod
    def of(cls, session: Session, drafts: list[domain.Draft]) -> _Lookup:
        ids = {k: sorted({d.recipient_id for d in drafts if d.recipient_kind == k})
               for k in domain.RECIPIENT_KINDS}
        none = literal(None, String)
        parts = [select(literal("erased"), erased_referrals.c.referral_id, none, none)
                 .where(erased_referrals.c.referral_id.in_({d.referral_id for d in drafts}))]
        if ids["org"]:
            parts += [select(literal("org"), org_view.c.organization_id, none,
                             cast(org_view.c.channels, String))
                      .where(org_view.c.organization_id.in_(ids["org"])),
                      select(literal("hook"), webhooks.c.organization_id, webhooks.c.id, none)
                      .where(webhooks.c.organization_id.in_(ids["org"]),
                             webhooks.c.active.is_(True))]
        who = or_(and_(preferences.c.role == "provider",
                       preferences.c.organization_id.in_(ids["org"])),
                  and_(preferences.c.role == "supervisor",
                       preferences.c.agency_id.in_(ids["agency_supervisors"])),
                  preferences.c.user_id.in_(ids["user"]))
        parts.append(select(literal("user"), preferences.c.user_id, preferences.c.role,
                            preferences.c.organization_id, preferences.c.agency_id,
                            cast(preferences.c.channels, String), preferences.c.email,
                            preferences.c.sms_number).where(who))
        width = 8
        padded = [p.add_columns(*[none] * (width - len(p.selected_columns))) for p in parts]
        found = cls(set(), {}, {}, {})
        for r in session.execute(union_all(*padded)).all():
            found._add(tuple(r))
        return found

    def _add(self, r: tuple[Any, ...]) -> None:
        what = r[0]
        if what == "erased":
            self.erased.add(r[1])
        elif what == "org":
            self.org_channels[r[1]] = json.loads(r[3])
        elif what == "hook":
            self.hooks.setdefault(r[1], []).append(r[2])
        else:
            user = _User(user_id=r[1], channels=json.loads(r[5]), email=r[6], sms=r[7])
            role, org, agency = r[2], r[3], r[4]
            if role == "provider" and org:
                self.users.setdefault(("org", org), []).append(user)
            if role == "supervisor" and agency:
                self.users.setdefault(("agency_supervisors", agency), []).append(user)
            self.users.setdefault(("user", r[1]), []).append(user)

    def targets(self, n: Any, options: Options) -> list[tuple[str, str, str, str]]:
        """(notification id, channel, target kind, target id) of one new notification."""
        out: list[tuple[str, str, str, str]] = []
        if n.recipient_kind == "org":
            allowed = self.org_channels.get(n.recipient_id)  # None: the directory is silent
            if allowed is None or "webhook" in allowed:
                out += [(n.id, "webhook", "webhook", h) for h in self.hooks.get(n.recipient_id, [])]
            if allowed is not None and "email" not in allowed:
                options = Options(email=False, sms=options.sms)
        for user in self.users.get((n.recipient_kind, n.recipient_id), []):
            if options.email and user.email and "email" in user.channels:
                out.append((n.id, "email", "user", user.user_id))
            if options.sms and user.sms and "sms" in user.channels:
                out.append((n.id, "sms", "user", user.user_id))
        return out


@dataclass(frozen=True)
class _User:
    user_id: str
    channels: list[str]
    email: str | None
    sms: str | None


def _record_refusal(session: Session, data: Any) -> int:
    """Remember a declined/expired offer; return the referral's refusals so far (0 when
    this event records none)."""
    if not domain.is_refusal(data):
        return 0
    offer = data["offer"]
    session.execute(upsert(session, offer_refusals).values(
        offer_id=offer["offer_id"], referral_id=data["referral_id"], status=offer["status"],
    ).on_conflict_do_nothing(index_elements=[offer_refusals.c.offer_id]))
    return int(session.execute(select(func.count()).select_from(offer_refusals).where(
        offer_refusals.c.referral_id == data["referral_id"])).scalar_one())


def _track_reminder(session: Session, data: Any) -> None:
    """Schedule the 75 % reminder of a new open offer; cancel it once the offer is answered."""
    offer = data.get("offer")
    if data["to_status"] == "offered" and offer and offer["status"] == "open":
        offered, expires = (events.parse_time(data["occurred_at"]),
                            events.parse_time(offer["expires_at"]))
        session.execute(upsert(session, offer_reminders).values(
            offer_id=offer["offer_id"], referral_id=data["referral_id"],
            organization_id=offer["organization_id"], short_id=data["short_id"],
            need=data["need"], urgency=data["urgency"], expires_at=expires,
            remind_at=domain.reminder_at(offered, expires), status="pending",
        ).on_conflict_do_nothing(index_elements=[offer_reminders.c.offer_id]))
        return
    pending = offer_reminders.c.status == "pending"
    if data["to_status"] in events.TERMINAL_STATUSES:
        _cancel_reminders(session, offer_reminders.c.referral_id == data["referral_id"])
    elif offer and offer["status"] != "open":
        _cancel_reminders(session, pending & (offer_reminders.c.offer_id == offer["offer_id"]))


def _cancel_reminders(session: Session, cond: Any) -> None:
    session.execute(update(offer_reminders)
                    .where(cond, offer_reminders.c.status == "pending").values(status="cancelled"))


def on_consent_changed(session: Session, env: events.Envelope) -> None:
    """Revoking referrer updates also withdraws what the officer was already told (§5);
    their pending e-mails/SMS go with them (deliveries cascade). Narrower levels apply to
    notifications produced after the change, which carry the new level on their event."""
    if domain.referrer_may_keep(env.data["consent"]["referrer_updates"]):
        return
    mine = select(notifications.c.id).where(
        notifications.c.referral_id == env.data["referral_id"],
        notifications.c.recipient_kind == "user")
    session.execute(delete(deliveries).where(deliveries.c.notification_id.in_(mine)))
    session.execute(delete(notifications).where(notifications.c.id.in_(mine)))


def on_referral_erased(session: Session, env: events.Envelope) -> None:
    """Erasure: drop the stored text of every notification about the referral, cancel what
    is still to be sent or reminded, and remember the erasure for later events."""
    rid = env.data["referral_id"]
    now = _now()
    session.execute(upsert(session, erased_referrals).values(referral_id=rid, erased_at=now)
                    .on_conflict_do_nothing(index_elements=[erased_referrals.c.referral_id]))
    session.execute(update(notifications).where(notifications.c.referral_id == rid)
                    .values(title=None, body=None))
    theirs = select(notifications.c.id).where(notifications.c.referral_id == rid)
    session.execute(update(deliveries).where(
        deliveries.c.notification_id.in_(theirs), deliveries.c.status == "pending",
    ).values(status="cancelled", error="referral erased", next_attempt_at=None, updated_at=now))
    _cancel_reminders(session, offer_reminders.c.referral_id == rid)


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


# ---- timers ----------------------------------------------------------------------------------

def send_due_reminders(session: Session, options: Options = DEFAULT_OPTIONS,
                       now: datetime | None = None, limit: int = 100) -> int:
    """Turn reminders that are due into notifications (once each: the reminder's id is the
    event id); several workers can run this, each claims different rows."""
    now = now or _now()
    query = select(offer_reminders).where(offer_reminders.c.status == "pending",
                                          offer_reminders.c.remind_at <= now).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    due = session.execute(query).all()
    for r in due:
        if _aware(r.expires_at) > now:
            facts = domain.Facts(referral_id=r.referral_id, short_id=r.short_id, need=r.need,
                                 urgency=r.urgency)
            draft = domain.reminder_draft(facts, r.organization_id,
                                          events.format_time(_aware(r.expires_at)),
                                          events.format_time(now))
            store(session, str(uuid.uuid5(_REMINDER_NS, r.offer_id)), [draft], options, now)
        session.execute(update(offer_reminders).where(offer_reminders.c.offer_id == r.offer_id)
                        .values(status="sent" if _aware(r.expires_at) > now else "cancelled"))
    return len(due)


def _aware(value: datetime) -> datetime:
    """SQLite returns naive datetimes; they were stored in UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
