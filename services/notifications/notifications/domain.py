"""Which notifications an event causes, to whom, and their id-only text (DESIGN.md §5, §8).

Pure: no Flask, SQLAlchemy, Kafka, clock or environment.

The id-only rule is enforced by construction: text is built from :class:`Facts` (short id,
need, urgency and referral id for the link) plus a deadline, and :func:`facts_of` is the
only place that reads an event's data for text. Everything else in the data (agency,
officer pseudonym, organization) decides *who* is told, never *what* they read.
"""
from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

IN_APP = "in_app"
RECIPIENT_KINDS = ("org", "user", "agency_supervisors")
KINDS = ("offer_made", "offer_reminder", "offer_withdrawn", "referral_cancelled", "milestone",
         "unmatched", "sla_breached", "repeated_refusals")
EXTERNAL_CHANNELS = ("email", "webhook", "sms")
# A provider's offers reach its in-app feed whatever the preferences say (issue 6).
ALWAYS_IN_APP_FOR_PROVIDERS = frozenset({"offer_made", "offer_reminder"})
REMINDER_FRACTION = 0.75  # remind when this share of the response window has passed
REFUSALS_ALERT = 3  # the third decline or expiry of one referral alerts the supervisors

# Referrer milestones under consent `milestones` (DESIGN.md §5): no provider identity.
MILESTONE_TEXT = {
    "received": "received",
    "connected": "connected with a service",
    "closed_connected": "closed — connected",
    "closed_not_connected": "closed — not connected",
}
_CONNECTED = frozenset({"accepted", "in_progress", "on_hold"})
_CLOSED_NOT_CONNECTED = frozenset({"failed", "cancelled", "entered_in_error"})
_ENDS_OFFER = frozenset({"cancelled", "entered_in_error"})
_SLA_TEXT = {"offer_response": "offer not answered by",
             "first_contact": "first contact not made by"}

Data = Mapping[str, Any]


@dataclass(frozen=True)
class Facts:
    """The only event facts allowed into notification text (besides a deadline)."""

    referral_id: str
    short_id: str
    need: str
    urgency: str

    @property
    def label(self) -> str:
        """``urgent housing referral R-7F3K``."""
        return f"{self.urgency} {self.need.replace('_', ' ')} referral {self.short_id}"

    @property
    def link(self) -> str:
        return f"/referrals/{self.referral_id}"


@dataclass(frozen=True)
class Draft:
    """One notification to store: recipient, kind and id-only text."""

    recipient_kind: str
    recipient_id: str
    kind: str
    referral_id: str
    short_id: str
    title: str
    body: str
    link: str
    channel: str = IN_APP


def facts_of(data: Data) -> Facts:
    return Facts(referral_id=str(data["referral_id"]), short_id=str(data["short_id"]),
                 need=str(data["need"]), urgency=str(data["urgency"]))


def _draft(facts: Facts, recipient: tuple[str, str], kind: str, title: str,
           body: str) -> Draft:
    return Draft(recipient_kind=recipient[0], recipient_id=recipient[1], kind=kind,
                 referral_id=facts.referral_id, short_id=facts.short_id, title=title,
                 body=body, link=facts.link)


def format_deadline(deadline: str, reference: str) -> str:
    """``14:30 UTC`` when on the reference day, else ``2026-11-28 14:30 UTC``."""
    when, ref = _utc(deadline), _utc(reference)
    if when.date() == ref.date():
        return f"{when:%H:%M} UTC"
    return f"{when:%Y-%m-%d %H:%M} UTC"


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text)


def milestone(status: str | None) -> str:
    """What an officer under consent `milestones` sees of a status."""
    if status in _CONNECTED:
        return "connected"
    if status == "completed":
        return "closed_connected"
    if status in _CLOSED_NOT_CONNECTED:
        return "closed_not_connected"
    return "received"


# --- per event type ---------------------------------------------------------------------

def _on_submitted(data: Data) -> list[Draft]:
    if data["consent"]["referrer_updates"] == "none":
        return []
    facts = facts_of(data)
    return [_referrer_draft(facts, data, MILESTONE_TEXT["received"])]


def _on_status_changed(data: Data, refusals: int) -> list[Draft]:
    if data.get("reason_code") == "proposal_void":
        return []  # a proposal answered "no": nothing changed for anyone
    facts = facts_of(data)
    return [*_for_organization(facts, data), *_for_supervisors(facts, data, refusals),
            *_for_referrer(facts, data)]


def _on_sla_breached(data: Data) -> list[Draft]:
    facts = facts_of(data)
    due = format_deadline(data["due_at"], data["occurred_at"])
    what = _SLA_TEXT.get(data["sla"], "deadline missed:")
    return [_draft(facts, ("agency_supervisors", str(data["agency_id"])), "sla_breached",
                   f"SLA breached: {facts.short_id}",
                   f"SLA breached on {facts.label} — {what} {due}")]


# --- recipients of a status change ------------------------------------------------------

def _for_organization(facts: Facts, data: Data) -> list[Draft]:
    offer = data.get("offer")
    if not offer:
        return []
    org = ("org", str(offer["organization_id"]))
    to_status, offer_status = data["to_status"], offer["status"]
    if to_status in _ENDS_OFFER and offer_status in ("open", "accepted", "withdrawn"):
        how = "cancelled" if to_status == "cancelled" else "closed as entered in error"
        return [_draft(facts, org, "referral_cancelled", f"Referral {facts.short_id} {how}",
                       f"The {facts.label} was {how}; no further action is needed")]
    if to_status == "offered" and offer_status == "open":
        due = format_deadline(offer["expires_at"], data["occurred_at"])
        return [_draft(facts, org, "offer_made", f"New {facts.label}",
                       f"New {facts.label} offered to your organization — respond by {due}")]
    if offer_status in ("withdrawn", "expired"):
        how = "expired" if offer_status == "expired" else "was withdrawn"
        return [_draft(facts, org, "offer_withdrawn", f"Offer {how}: {facts.short_id}",
                       f"The offer of {facts.label} to your organization {how}")]
    return []


def is_refusal(data: Data) -> bool:
    """Does this status change record a declined or expired offer?"""
    offer = data.get("offer")
    return offer is not None and offer["status"] in ("declined", "expired")


def _for_supervisors(facts: Facts, data: Data, refusals: int) -> list[Draft]:
    agency = ("agency_supervisors", str(data["agency_id"]))
    out = []
    if is_refusal(data) and refusals == REFUSALS_ALERT:
        out.append(_draft(facts, agency, "repeated_refusals",
                          f"Declined {refusals} times: {facts.short_id}",
                          f"The {facts.label} was declined or expired {refusals} times"
                          " — consider re-routing or assigning it"))
    if data["to_status"] == "unmatched" and data.get("from_status") != "unmatched":
        out.append(_draft(facts, agency, "unmatched", f"Unmatched: {facts.short_id}",
                          f"No eligible provider found for {facts.label} — re-route or assign it"))
    return out


def _for_referrer(facts: Facts, data: Data) -> list[Draft]:
    """The referring officer, only as far as the resident's `referrer_updates` allows."""
    before, after = data.get("from_status"), data["to_status"]
    updates = data["referrer_updates"]
    if updates == "none" or before == after:
        return []
    if updates == "full":
        return [_referrer_draft(facts, data, "now " + after.replace("_", " "))]
    if milestone(before) == milestone(after):
        return []
    return [_referrer_draft(facts, data, MILESTONE_TEXT[milestone(after)])]


def _referrer_draft(facts: Facts, data: Data, what: str) -> Draft:
    return _draft(facts, ("user", str(data["officer_ref"])), "milestone",
                  f"Referral {facts.short_id}: {what}", f"Your {facts.label}: {what}")


def notifications_for(event_type: str, data: Data, *, refusals: int = 0) -> list[Draft]:
    """The notifications one event causes (empty for types that notify nobody).

    ``refusals``: how many offers of the referral were declined or expired, this one included.
    """
    if event_type == "referral.submitted":
        return _on_submitted(data)
    if event_type == "referral.status_changed":
        return _on_status_changed(data, refusals)
    if event_type == "referral.sla_breached":
        return _on_sla_breached(data)
    return []


# --- offer reminders --------------------------------------------------------------------

def reminder_at(offered_at: datetime, expires_at: datetime) -> datetime:
    """When REMINDER_FRACTION of the response window has passed."""
    return offered_at + (expires_at - offered_at) * REMINDER_FRACTION


def reminder_draft(facts: Facts, organization_id: str, expires_at: str, now: str) -> Draft:
    due = format_deadline(expires_at, now)
    return _draft(facts, ("org", organization_id), "offer_reminder",
                  f"Reminder: respond by {due} — {facts.short_id}",
                  f"The offer of {facts.label} to your organization expires at {due}")


# --- preferences and delivery -----------------------------------------------------------

def reaches_in_app(kind: str, recipient_kind: str, channels: list[str] | None) -> bool:
    """Does a notification appear in a user's feed, given their chosen ``channels``
    (None: no preferences saved, so everything does)?"""
    if channels is None or IN_APP in channels:
        return True
    return recipient_kind == "org" and kind in ALWAYS_IN_APP_FOR_PROVIDERS


def retry_delay(attempt: int, base_s: float, cap_s: float,
                rand: random.Random | None = None) -> timedelta:
    """Exponential backoff with jitter after failed ``attempt`` (1-based): half the
    exponential step fixed, half random ("equal jitter"), so delays still grow while
    dispatchers that failed together spread out."""
    step = min(cap_s, base_s * 2 ** (attempt - 1))
    jitter = (rand or random).uniform(0, step / 2)
    return timedelta(seconds=step / 2 + jitter)


def referrer_may_keep(referrer_updates: str) -> bool:
    """After a consent change: may the officer keep notifications already delivered?"""
    return referrer_updates != "none"
