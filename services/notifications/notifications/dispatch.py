"""The dispatcher: works through the delivery log (e-mail, webhook, SMS) in the worker.

A round claims due rows in a short transaction by pushing ``next_attempt_at`` one lease
ahead (PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so several workers share the log), sends
outside any transaction, then records the attempt. A worker that dies mid-send leaves the
row to be retried when its lease ends: delivery is at least once, and receivers can
deduplicate by the delivery id header. Every attempt is a row in ``delivery_attempts``.
"""
from __future__ import annotations

import logging
import random
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter
from sqlalchemy import bindparam, select, update

from servicekit import events, logs
from servicekit.db import Database

from . import domain
from .channels import EmailSender, Message, NoSms, SendError, SmsSender, WebhookSender
from .tables import deliveries, delivery_attempts, notifications, preferences, webhooks

log = logging.getLogger(__name__)
DELIVERED = Counter("notification_deliveries_total", "Delivery attempts by outcome",
                    ["channel", "result"])


@dataclass(frozen=True)
class DispatchConfig:
    max_attempts: int = 6
    backoff_s: float = 10.0
    backoff_max_s: float = 3600.0
    batch_size: int = 50
    lease_s: float = 120.0
    poll_interval_s: float = 0.5
    public_base_url: str = "http://127.0.0.1:8000"
    concurrency: int = 8  # sends in flight at once, so one slow receiver cannot stall the log


@dataclass(frozen=True)
class Job:
    row: Any  # the delivery joined with its notification and target


@dataclass(frozen=True)
class Outcome:
    """What one attempt did, recorded with the round's other outcomes in one transaction."""

    row: Any
    at: datetime
    status: str  # the delivery's new status
    attempt: int
    error: str | None = None
    code: int | None = None
    next_at: datetime | None = None
    result: str | None = None  # the attempt row's status; None: no attempt was made


class Dispatcher:
    def __init__(self, db: Database, config: DispatchConfig, *, webhook: WebhookSender,
                 email: EmailSender | None = None, sms: SmsSender | None = None,
                 rand: random.Random | None = None) -> None:
        self.db, self.config = db, config
        self.webhook, self.email, self.sms = webhook, email, sms or NoSms()
        self.rand = rand or random.Random()

    def run_forever(self, stop: threading.Event) -> None:
        """The worker component (named after this method in the worker's logs)."""
        while not stop.is_set():
            if self.run_once() == 0:
                stop.wait(self.config.poll_interval_s)

    def run_once(self, now: datetime | None = None) -> int:
        """One round: claim what is due, attempt them concurrently, record the outcomes."""
        jobs = self._claim(now or datetime.now(UTC))
        if not jobs:
            return 0
        with ThreadPoolExecutor(max_workers=max(1, min(self.config.concurrency, len(jobs))),
                                thread_name_prefix="dispatch") as pool:
            outcomes = list(pool.map(self._attempt, jobs))
        self._record(outcomes)
        return len(jobs)

    def _claim(self, now: datetime) -> list[Job]:
        with self.db.transaction() as session:
            query = (select(deliveries.c.id)
                     .where(deliveries.c.status == "pending", deliveries.c.next_attempt_at <= now)
                     .order_by(deliveries.c.next_attempt_at).limit(self.config.batch_size))
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            ids = list(session.execute(query).scalars())
            if not ids:
                return []
            session.execute(update(deliveries).where(deliveries.c.id.in_(ids)).values(
                next_attempt_at=now + timedelta(seconds=self.config.lease_s)))
            rows = session.execute(
                select(deliveries, notifications.c.kind, notifications.c.referral_id,
                       notifications.c.short_id, notifications.c.title, notifications.c.body,
                       notifications.c.link, notifications.c.created_at.label("n_created_at"),
                       webhooks.c.url, webhooks.c.secret, webhooks.c.active,
                       preferences.c.email, preferences.c.sms_number)
                .join(notifications, notifications.c.id == deliveries.c.notification_id)
                .outerjoin(webhooks, (deliveries.c.target_kind == "webhook")
                           & (webhooks.c.id == deliveries.c.target_id))
                .outerjoin(preferences, (deliveries.c.target_kind == "user")
                           & (preferences.c.user_id == deliveries.c.target_id))
                .where(deliveries.c.id.in_(ids))).all()
        return [Job(r) for r in rows]

    def _message(self, r: Any) -> Message:
        created = r.n_created_at if r.n_created_at.tzinfo else r.n_created_at.replace(tzinfo=UTC)
        return Message(delivery_id=r.id, notification_id=r.notification_id, kind=r.kind,
                       referral_id=r.referral_id, short_id=r.short_id, title=r.title,
                       body=r.body, link=self.config.public_base_url.rstrip("/") + r.link,
                       created_at=events.format_time(created))

    def _send(self, r: Any) -> int | None:
        message = self._message(r)
        if r.channel == "webhook":
            if not r.url or not r.active:
                raise SendError("webhook removed", retry=False)
            return self.webhook.send(r.url, r.secret, message)
        if r.channel == "email":
            if self.email is None:
                raise SendError("e-mail is not configured", retry=False)
            if not r.email:
                raise SendError("recipient has no e-mail address", retry=False)
            self.email.send(r.email, message)
            return None
        if r.channel == "sms":
            if not r.sms_number:
                raise SendError("recipient has no SMS number", retry=False)
            self.sms.send(r.sms_number, f"{message.body} {message.link}")
            return None
        raise SendError(f"unknown channel {r.channel}", retry=False)

    def _attempt(self, job: Job) -> Outcome:
        r, now = job.row, datetime.now(UTC)
        if r.title is None or r.body is None:  # the referral was erased: nothing to send
            return Outcome(r, now, "cancelled", r.attempt, error="referral erased")
        attempt = r.attempt + 1
        try:
            code = self._send(r)
        except SendError as exc:
            spent = attempt - r.retry_base
            if exc.retry and spent < self.config.max_attempts:
                delay = domain.retry_delay(spent, self.config.backoff_s, self.config.backoff_max_s,
                                           self.rand)
                return Outcome(r, now, "pending", attempt, exc.error, exc.status_code,
                               now + delay, "retry")
            return Outcome(r, now, "failed", attempt, exc.error, exc.status_code, None, "failed")
        except Exception as exc:  # a bug in a sender must not stop the log: retry later
            log.exception("delivery crashed", extra=logs.log_fields(delivery_id=r.id))
            return Outcome(r, now, "pending", attempt, f"internal {type(exc).__name__}", None,
                           now + timedelta(seconds=self.config.lease_s), "retry")
        return Outcome(r, now, "sent", attempt, None, code, None, "sent")

    def _record(self, outcomes: list[Outcome]) -> None:
        """Write a round's outcomes. A delivery no longer pending (cancelled by an erasure or
        deleted by a consent revocation while in flight) keeps its state."""
        with self.db.transaction() as session:
            query = select(deliveries.c.id).where(
                deliveries.c.id.in_([o.row.id for o in outcomes]),
                deliveries.c.status == "pending")
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update()
            live = set(session.execute(query).scalars())
            done = [o for o in outcomes if o.row.id in live]
            if done:  # three statements per round, not two per delivery
                session.execute(
                    update(deliveries).where(deliveries.c.id == bindparam("d_id")).values(
                        status=bindparam("d_status"), attempt=bindparam("d_attempt"),
                        error=bindparam("d_error"), last_status_code=bindparam("d_code"),
                        next_attempt_at=bindparam("d_next"), updated_at=bindparam("d_at")),
                    [{"d_id": o.row.id, "d_status": o.status, "d_attempt": o.attempt,
                      "d_error": o.error, "d_code": o.code, "d_next": o.next_at, "d_at": o.at}
                     for o in done])
            tried = [o for o in done if o.result is not None]
            if tried:
                session.execute(delivery_attempts.insert().values([
                    {"id": str(uuid.uuid4()), "delivery_id": o.row.id, "attempt": o.attempt,
                     "status": o.result, "error": o.error, "status_code": o.code,
                     "next_attempt_at": o.next_at, "attempted_at": o.at} for o in tried]))
        for o in outcomes:
            DELIVERED.labels(o.row.channel, o.result or o.status).inc()
            log.info("delivery attempt", extra=logs.log_fields(
                delivery_id=o.row.id, channel=o.row.channel, attempt=o.attempt,
                outcome=o.result or o.status, status_code=o.code, error=o.error))
