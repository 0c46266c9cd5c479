"""notifications' tables. Nothing here is personal data: text is id-only (DESIGN.md §8), and
recipients are organization ids, agency ids or the officer's pseudonym."""
from __future__ import annotations

from sqlalchemy import (
    JSON,
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

# Delivery log for the channels a later issue adds (email, webhook): one row per attempt
# series; the in-app channel is delivered by being stored and writes no rows.
deliveries = Table(
    "deliveries", metadata,
    Column("id", String(36), primary_key=True),
    Column("notification_id", String(36), ForeignKey("notifications.id", ondelete="CASCADE"),
           nullable=False, index=True),
    Column("channel", String(20), nullable=False),
    Column("status", String(20), nullable=False),  # pending | sent | failed | dead
    Column("attempt", Integer, nullable=False, server_default="0"),
    Column("error", Text),  # our own short error text, never a response body
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_deliveries_due", "status", "next_attempt_at"),
)

# Read model built from provider.events: which channels each organization wants.
org_view = Table(
    "org_view", metadata,
    Column("organization_id", String(200), primary_key=True),
    Column("channels", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
