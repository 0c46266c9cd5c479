"""referral-intake's tables. PII lives only in ``subjects`` and ``referrals.notes_ct``, each
field encrypted under the subject's data key; every other column is de-identified."""
from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from servicekit.db import add_kit_tables, new_metadata

metadata = new_metadata()
add_kit_tables(metadata)

subjects = Table(
    "subjects", metadata,
    Column("id", String(36), primary_key=True),
    Column("wrapped_key", Text, nullable=True),  # NULL after erasure (crypto-shredded)
    Column("key_version", Integer, nullable=False, server_default="1"),
    Column("given_name_ct", Text), Column("family_name_ct", Text),
    Column("birth_date_ct", Text), Column("phone_ct", Text), Column("email_ct", Text),
    Column("location_ct", Text),
    Column("erased_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

referrals = Table(
    "referrals", metadata,
    Column("id", String(36), primary_key=True),
    Column("short_id", String(12), nullable=False, unique=True),
    Column("subject_id", String(36), ForeignKey("subjects.id"), nullable=False),
    Column("need", String(40), nullable=False),
    Column("urgency", String(20), nullable=False),
    Column("status", String(30), nullable=False),
    Column("agency_id", String(100), nullable=False),
    Column("officer_sub", String(200), nullable=False),
    Column("officer_ref", String(64), nullable=False),  # pseudonym carried in events
    Column("geohash", String(12), nullable=False),
    Column("coarse_lat", JSON, nullable=False), Column("coarse_lon", JSON, nullable=False),
    Column("eligibility", JSON, nullable=False),  # non-identifying facets only
    Column("notes_ct", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_referrals_officer", "officer_sub", "created_at"),
    Index("ix_referrals_agency", "agency_id", "created_at"),
)

consents = Table(
    "consents", metadata,  # immutable history; the latest row rules
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("referral_id", String(36), ForeignKey("referrals.id"), nullable=False, index=True),
    Column("share_with_provider", Boolean, nullable=False),
    Column("referrer_updates", String(20), nullable=False),
    Column("contact_methods", JSON, nullable=False),
    Column("obtained_via", String(20), nullable=False),
    Column("captured_by", String(200), nullable=False),
    Column("captured_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
)

offers = Table(
    "offers", metadata,
    Column("id", String(36), primary_key=True),
    Column("referral_id", String(36), ForeignKey("referrals.id"), nullable=False, index=True),
    Column("service_id", String(36), nullable=False),
    Column("organization_id", String(36), nullable=False, index=True),
    Column("attempt", Integer, nullable=False),
    Column("proposal_id", String(36), nullable=False, unique=True),
    Column("status", String(20), nullable=False),
    Column("reason_code", String(40)),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("answered_at", DateTime(timezone=True)),
)

timeline = Table(
    "timeline", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("referral_id", String(36), ForeignKey("referrals.id"), nullable=False, index=True),
    Column("from_status", String(30)), Column("to_status", String(30), nullable=False),
    Column("reason_code", String(40)), Column("outcome_code", String(40)),
    Column("actor_role", String(20), nullable=False),
    Column("offer_id", String(36)),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
)
