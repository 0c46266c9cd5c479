"""notifications' tables. Nothing here is personal data: text is id-only (DESIGN.md §8), and
recipients are organization ids, agency ids or the officer's pseudonym."""
from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from servicekit.db import add_kit_tables, new_metadata

metadata = new_metadata()
add_kit_tables(metadata)

notifications = Table(
    "notifications", metadata,
    Column("id", String(36), primary_key=True),
    # org: organization_id; user: officer pseudonym (officer_ref); agency_supervisors: agency_id
    Column("recipient_kind", String(30), nullable=False),
    Column("recipient_id", String(200), nullable=False),
    Column("channel", String(20), nullable=False),
    Column("referral_id", String(36), nullable=False, index=True),
    Column("short_id", String(12), nullable=False),
    Column("event_id", String(36), nullable=False),
    Column("kind", String(40), nullable=False),
    Column("title", Text),  # NULL after the referral's erasure
    Column("body", Text),   # NULL after the referral's erasure
    Column("link", String(300), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("read_at", DateTime(timezone=True)),
    # A redelivered event never creates a second notification for the same recipient.
    UniqueConstraint("event_id", "recipient_kind", "recipient_id", "channel"),
    CheckConstraint("recipient_kind IN ('org', 'user', 'agency_supervisors')",
                    name="recipient_kind"),
    Index("ix_notifications_feed", "recipient_kind", "recipient_id", "created_at"),
)

# Delivery log of the external channels (email, webhook, sms): one row per (notification,
# channel, target); the in-app channel is delivered by being stored and writes no rows.
deliveries = Table(
    "deliveries", metadata,
    Column("id", String(36), primary_key=True),
    Column("notification_id", String(36), ForeignKey("notifications.id", ondelete="CASCADE"),
           nullable=False, index=True),
    Column("channel", String(20), nullable=False),       # email | webhook | sms
    Column("target_kind", String(20), nullable=False),   # webhook | user
    Column("target_id", String(200), nullable=False),    # webhook id | preferences.user_id
    Column("status", String(20), nullable=False),        # pending | sent | failed | cancelled
    Column("attempt", Integer, nullable=False, server_default="0"),
    Column("retry_base", Integer, nullable=False, server_default="0"),  # attempts before a manual retry
    Column("error", Text),  # our own short error text, never a response body
    Column("last_status_code", Integer),
    Column("next_attempt_at", DateTime(timezone=True)),  # also the lease of a claimed row
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("notification_id", "channel", "target_id"),
    Index("ix_deliveries_due", "status", "next_attempt_at"),
)

# Every attempt of every delivery, as it happened.
delivery_attempts = Table(
    "delivery_attempts", metadata,
    Column("id", String(36), primary_key=True),
    Column("delivery_id", String(36), ForeignKey("deliveries.id", ondelete="CASCADE"),
           nullable=False, index=True),
    Column("attempt", Integer, nullable=False),
    Column("status", String(20), nullable=False),  # sent | retry | failed
    Column("error", Text),
    Column("status_code", Integer),
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("attempted_at", DateTime(timezone=True), nullable=False),
)

# Webhooks registered per organization; the secret signs bodies (HMAC-SHA256) and is shown
# once, when it is issued.
webhooks = Table(
    "webhooks", metadata,
    Column("id", String(36), primary_key=True),
    Column("organization_id", String(200), nullable=False, index=True),
    Column("url", String(2000), nullable=False),
    Column("secret", String(100), nullable=False),
    Column("active", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("organization_id", "url"),
)

# Per-user channel choices. user_id: the officer pseudonym for officers, else the token sub.
# email / sms_number are staff contact points (never a resident's).
preferences = Table(
    "preferences", metadata,
    Column("user_id", String(200), primary_key=True),
    Column("role", String(20), nullable=False),
    Column("organization_id", String(200), index=True),
    Column("agency_id", String(200), index=True),
    Column("channels", JSON, nullable=False),
    Column("email", String(320)),
    Column("sms_number", String(20)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Offers awaiting their 75 % reminder.
offer_reminders = Table(
    "offer_reminders", metadata,
    Column("offer_id", String(200), primary_key=True),
    Column("referral_id", String(36), nullable=False, index=True),
    Column("organization_id", String(200), nullable=False),
    Column("short_id", String(12), nullable=False),
    Column("need", String(40), nullable=False),
    Column("urgency", String(20), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("remind_at", DateTime(timezone=True), nullable=False),
    Column("status", String(20), nullable=False),  # pending | sent | cancelled
    Index("ix_offer_reminders_due", "status", "remind_at"),
)

# Offers of a referral that were declined or expired (third one alerts the supervisors).
offer_refusals = Table(
    "offer_refusals", metadata,
    Column("offer_id", String(200), primary_key=True),
    Column("referral_id", String(36), nullable=False, index=True),
    Column("status", String(20), nullable=False),
)

# Referrals erased (DESIGN §5): later notifications about them carry no text and are not sent.
erased_referrals = Table(
    "erased_referrals", metadata,
    Column("referral_id", String(36), primary_key=True),
    Column("erased_at", DateTime(timezone=True), nullable=False),
)

# Read model built from provider.events: which channels each organization wants.
org_view = Table(
    "org_view", metadata,
    Column("organization_id", String(200), primary_key=True),
    Column("channels", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
