"""notifications event use cases. Handlers take the open session and never commit.

Each notification is stored once per (event, recipient, in-app channel); the external
channels of that notification (e-mail, webhook, SMS) become rows of the delivery log in the
same transaction, which the dispatcher then works through (dispatch.py).
"""
from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import groupby
from typing import Any

from sqlalchemy import (
    String,
    and_,
    cast,
    delete,
    literal_column,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.orm import Session

from servicekit import events
from servicekit.db import upsert

from . import bulk, domain
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

class ReferralEvents:
    """The consumer's handler of the events that notify (submitted, status changes, SLA
    breaches). The runner hands it runs of consecutive events of a batch at once
    (``handle_many``), and a lone event through ``__call__``; both do what handling each
    event in turn would, in a handful of statements per run instead of three or more per
    event (which made a consumer's CPU per event grow with its statements, not its work)."""

    def __init__(self, options: Options = DEFAULT_OPTIONS) -> None:
        self.options = options

    def __call__(self, session: Session, env: events.Envelope) -> None:
        on_referral_events(session, [env], self.options)

    def handle_many(self, session: Session, envs: list[events.Envelope]) -> None:
        on_referral_events(session, envs, self.options)


def on_referral_event(session: Session, env: events.Envelope,
                      options: Options = DEFAULT_OPTIONS) -> None:
    """Store the notifications an event causes; a redelivered event adds none."""
    on_referral_events(session, [env], options)


def on_referral_events(session: Session, envs: list[events.Envelope],
                       options: Options = DEFAULT_OPTIONS) -> None:
    """``on_referral_event`` for each of ``envs`` in order, set-based, whatever the number of
    events: the refusals (a read and an insert, only when some event records one), the
    reminders (one statement per stretch of schedulings or of cancellations, so they keep
    the events' order; the last one goes with ``store_many``'s look-up), then
    ``store_many``. Refusal counts are those each event would see handled alone."""
    changes = [(i, env.data) for i, env in enumerate(envs)
               if env.type == events.REFERRAL_STATUS_CHANGED]
    refusals = _record_refusals(session, changes)
    last = _track_reminders(session, [data for _i, data in changes])
    batch = []
    for i, env in enumerate(envs):
        drafts = domain.notifications_for(env.type, env.data, refusals=refusals.get(i, 0))
        if drafts:
            batch.append((env.id, drafts, _now()))  # each event's own time: feeds keep order
    store_many(session, batch, options, also=last)


def store(session: Session, event_id: str, drafts: list[domain.Draft],
          options: Options = DEFAULT_OPTIONS, now: datetime | None = None) -> int:
    """Insert ``drafts`` (ignoring ones already stored for ``event_id``) and the delivery
    rows of the newly stored ones; returns how many notifications were new."""
    return store_many(session, [(event_id, drafts, now or _now())], options)


def store_many(session: Session, batch: list[tuple[str, list[domain.Draft], datetime]],
               options: Options = DEFAULT_OPTIONS, also: bulk.Write | None = None) -> int:
    """``store`` of several events' drafts, as (event id, drafts, created at), in three
    statements at most (recipient look-up, notifications, deliveries; on PostgreSQL the
    last two are one); returns how many notifications were new. Drafts already stored for
    their event are ignored, and so are their deliveries: each draft's deliveries are
    worked out before the insert, and written only for the notifications that were new.
    ``also``: a write of other tables (the reminders), run first; on PostgreSQL it is a CTE
    of the look-up, one statement fewer."""
    drafts = [d for _event_id, ds, _now in batch for d in ds]
    if not drafts:
        if also is not None:
            bulk.run(session, also)
        return 0
    found = _Lookup.of(session, drafts, also)
    rows, targets = [], []
    for event_id, ds, now in batch:
        for d in ds:
            row = {**vars(d), "id": str(uuid.uuid4()), "event_id": event_id,
                   "created_at": now}
            if d.referral_id in found.erased:
                row["title"] = row["body"] = None  # text of an erased referral is never kept
            else:
                targets += [(t, now) for t in found.targets(row, options)]
            rows.append(row)
    return bulk.insert_new_with_children(
        session, notifications, rows,
        conflict=[notifications.c.event_id, notifications.c.recipient_kind,
                  notifications.c.recipient_id, notifications.c.channel],
        children=deliveries, child_rows=[
            {"id": str(uuid.uuid4()), "notification_id": nid, "channel": channel,
             "target_kind": kind, "target_id": target, "status": "pending", "attempt": 0,
             "retry_base": 0, "next_attempt_at": now, "created_at": now, "updated_at": now}
            for (nid, channel, kind, target), now in targets],
        link=deliveries.c.notification_id,
        child_conflict=[deliveries.c.notification_id, deliveries.c.channel,
                        deliveries.c.target_id])


@dataclass
class _Lookup:
    """Everything ``store`` needs to know about some drafts' recipients, in one query:
    erased referrals, organizations' directory channels, active webhooks, users' choices."""

    erased: set[str]
    org_channels: dict[str, list[str]]
    hooks: dict[str, list[str]]
    users: dict[tuple[str, str], list[Any]]

    @classmethod
    def of(cls, session: Session, drafts: list[domain.Draft],
           also: bulk.Write | None = None) -> _Lookup:
        """The look-up; ``also`` (a write of none of the looked-up tables) runs first, on
        PostgreSQL in the same statement."""
        ids: dict[str, set[str]] = {k: set() for k in domain.RECIPIENT_KINDS}
        for d in drafts:
            ids[d.recipient_kind].add(d.recipient_id)
        params = {"referrals": sorted({d.referral_id for d in drafts}),
                  "orgs": sorted(ids["org"]), "agencies": sorted(ids["agency_supervisors"]),
                  "users": sorted(ids["user"])}
        postgresql = session.get_bind().dialect.name == "postgresql"
        if also is not None and postgresql:
            stmt = bulk.built(("lookup", postgresql, also.key), lambda: _lookup_statement(
                postgresql).add_cte(also.statement.cte("also")))
            params.update(also.params)
        else:
            if also is not None:
                bulk.run(session, also)
            stmt = bulk.built(("lookup", postgresql), lambda: _lookup_statement(postgresql))
        found = cls(set(), {}, {}, {})
        for r in session.connection().execute(stmt, params).all():
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

    def targets(self, row: dict[str, Any], options: Options
                ) -> list[tuple[str, str, str, str]]:
        """(notification id, channel, target kind, target id) of one notification's row."""
        out: list[tuple[str, str, str, str]] = []
        nid, kind, recipient = row["id"], row["recipient_kind"], row["recipient_id"]
        if kind == "org":
            allowed = self.org_channels.get(recipient)  # None: the directory is silent
            if allowed is None or "webhook" in allowed:
                out += [(nid, "webhook", "webhook", h) for h in self.hooks.get(recipient, [])]
            if allowed is not None and "email" not in allowed:
                options = Options(email=False, sms=options.sms)
        for user in self.users.get((kind, recipient), []):
            if options.email and user.email and "email" in user.channels:
                out.append((nid, "email", "user", user.user_id))
            if options.sms and user.sms and "sms" in user.channels:
                out.append((nid, "sms", "user", user.user_id))
        return out


def _lookup_statement(postgresql: bool) -> Any:
    """``_Lookup.of``'s query, built once per dialect: the parameters ``referrals``, ``orgs``,
    ``agencies`` and ``users`` take lists of ids (an empty one matches nothing)."""
    none = null()
    parts = [
        select(literal_column("'erased'"), erased_referrals.c.referral_id, none, none)
        .where(bulk.one_of_param(postgresql, erased_referrals.c.referral_id, "referrals")),
        select(literal_column("'org'"), org_view.c.organization_id, none,
               cast(org_view.c.channels, String))
        .where(bulk.one_of_param(postgresql, org_view.c.organization_id, "orgs")),
        select(literal_column("'hook'"), webhooks.c.organization_id, webhooks.c.id, none)
        .where(bulk.one_of_param(postgresql, webhooks.c.organization_id, "orgs"),
               webhooks.c.active.is_(True))]
    who = or_(and_(preferences.c.role == literal_column("'provider'"),
                   bulk.one_of_param(postgresql, preferences.c.organization_id, "orgs")),
              and_(preferences.c.role == literal_column("'supervisor'"),
                   bulk.one_of_param(postgresql, preferences.c.agency_id, "agencies")),
              bulk.one_of_param(postgresql, preferences.c.user_id, "users"))
    parts.append(select(literal_column("'user'"), preferences.c.user_id, preferences.c.role,
                        preferences.c.organization_id, preferences.c.agency_id,
                        cast(preferences.c.channels, String), preferences.c.email,
                        preferences.c.sms_number).where(who))
    width = 8
    return union_all(*[p.add_columns(*[none] * (width - len(p.selected_columns)))
                       for p in parts])


@dataclass(frozen=True)
class _User:
    user_id: str
    channels: list[str]
    email: str | None
    sms: str | None


def _record_refusals(session: Session, changes: list[tuple[int, Any]]) -> dict[int, int]:
    """Remember declined/expired offers; for each status change (by its index) that records
    one, the referral's refusals so far, counted as handling the changes in turn would:
    refusals are distinct offer ids, so a redelivered one never counts twice."""
    mine = [(i, data) for i, data in changes if domain.is_refusal(data)]
    if not mine:
        return {}
    referral_ids = sorted({data["referral_id"] for _i, data in mine})
    offer_ids = sorted({data["offer"]["offer_id"] for _i, data in mine})
    postgresql = session.get_bind().dialect.name == "postgresql"
    stmt = bulk.built(("refusals", postgresql), lambda: select(
        offer_refusals.c.offer_id, offer_refusals.c.referral_id).where(or_(
            bulk.one_of_param(postgresql, offer_refusals.c.referral_id, "referrals"),
            bulk.one_of_param(postgresql, offer_refusals.c.offer_id, "offers"))))
    known = dict(session.connection().execute(
        stmt, {"referrals": referral_ids, "offers": offer_ids}).all())
    per_referral = Counter(known.values())
    new, counts = [], {}
    for i, data in mine:
        offer, rid = data["offer"], data["referral_id"]
        if offer["offer_id"] not in known:
            known[offer["offer_id"]] = rid
            per_referral[rid] += 1
            new.append({"offer_id": offer["offer_id"], "referral_id": rid,
                        "status": offer["status"]})
        counts[i] = per_referral[rid]
    bulk.insert_new(session, offer_refusals, new, conflict=[offer_refusals.c.offer_id],
                    returning=[offer_refusals.c.offer_id])
    return counts


def _track_reminders(session: Session, changes: list[Any]) -> bulk.Write | None:
    """Schedule the 75 % reminder of each new open offer; cancel it once the offer is
    answered or the referral ends. In the changes' order: each stretch of schedulings is
    one insert, each stretch of cancellations one update. The last stretch's is returned,
    not run: the caller runs it (nothing else the handler does reads the reminders)."""
    ops: list[tuple[str, Any]] = []
    for data in changes:
        offer = data.get("offer")
        if data["to_status"] == "offered" and offer and offer["status"] == "open":
            offered, expires = (events.parse_time(data["occurred_at"]),
                                events.parse_time(offer["expires_at"]))
            ops.append(("schedule", {
                "offer_id": offer["offer_id"], "referral_id": data["referral_id"],
                "organization_id": offer["organization_id"], "short_id": data["short_id"],
                "need": data["need"], "urgency": data["urgency"], "expires_at": expires,
                "remind_at": domain.reminder_at(offered, expires), "status": "pending"}))
        elif data["to_status"] in events.TERMINAL_STATUSES:
            ops.append(("cancel", ("referral", data["referral_id"])))
        elif offer and offer["status"] != "open":
            ops.append(("cancel", ("offer", offer["offer_id"])))
    postgresql = session.get_bind().dialect.name == "postgresql"
    writes = []
    for what, stretch in groupby(ops, key=lambda op: op[0]):
        items = [item for _what, item in stretch]
        if what == "schedule":
            writes.append(bulk.insert_write(session, offer_reminders, items,
                                            conflict=[offer_reminders.c.offer_id]))
            continue
        key = ("cancel_reminders", postgresql)
        writes.append(bulk.Write(key, bulk.built(key, lambda: _cancel_statement(postgresql)), {
            "cancel_referrals": [v for k, v in items if k == "referral"],
            "cancel_offers": [v for k, v in items if k == "offer"]}))
    for write in writes[:-1]:
        bulk.run(session, write)
    return writes[-1] if writes else None


def _cancel_statement(postgresql: bool) -> Any:
    """``_track_reminders``' cancellation of the pending reminders of the referrals
    ``cancel_referrals`` and of the offers ``cancel_offers`` (lists; either may be empty)."""
    return update(offer_reminders).where(
        or_(bulk.one_of_param(postgresql, offer_reminders.c.referral_id, "cancel_referrals"),
            bulk.one_of_param(postgresql, offer_reminders.c.offer_id, "cancel_offers")),
        offer_reminders.c.status == literal_column("'pending'"),
    ).values(status=literal_column("'cancelled'"))


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
