"""referral-intake's tables. PII lives only in ``subjects`` and ``referrals.notes_ct``, each
field encrypted under the subject's data key; every other column is de-identified."""
from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
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
    # lifecycle milestones for timers and stats (set by handlers, never by clients)
    Column("accepted_at", DateTime(timezone=True)),
    Column("first_contact_due_at", DateTime(timezone=True)),
    Column("first_contact_at", DateTime(timezone=True)),
    Column("closed_at", DateTime(timezone=True)),
    Column("outcome_code", String(40)),
    Index("ix_referrals_contact_due", "first_contact_due_at"),
    Index("ix_referrals_subject", "subject_id"),
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
    Column("note_ct", Text),  # provider's progress note, encrypted under the subject's key
)

services = Table(
    "services", metadata,  # the registry's services as far as intake needs them (names, org)
    Column("id", String(200), primary_key=True),
    Column("organization_id", String(200), nullable=False),
    Column("organization_name", String(500)),
    Column("service_name", String(500)),
    Column("removed", Boolean, nullable=False, server_default="0"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

sla_breaches = Table(
    "sla_breaches", metadata,  # one row per (referral, SLA, offer): a breach is emitted once
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("referral_id", String(36), ForeignKey("referrals.id"), nullable=False, index=True),
    Column("sla", String(30), nullable=False),
    Column("offer_id", String(36), nullable=False),  # "" for first contact
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("referral_id", "sla", "offer_id", name="uq_sla_breaches_once"),
)

pii_grants = Table(
    "pii_grants", metadata,  # break-glass: a supervisor may read one referral's PII until expiry
    Column("id", String(36), primary_key=True),
    Column("referral_id", String(36), ForeignKey("referrals.id"), nullable=False, index=True),
    Column("supervisor_sub", String(200), nullable=False),
    Column("reason_ct", Text, nullable=False),  # the stated reason, encrypted (may name people)
    Column("granted_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

audit_log = Table(
    "audit_log", metadata,  # append-only, hash-chained (audit.py); never updated or deleted
    Column("chain", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("occurred_at", String(40), nullable=False),  # RFC 3339, hashed exactly as stored
    Column("actor", String(200), nullable=False),
    Column("role", String(20), nullable=False),
    Column("action", String(40), nullable=False),
    Column("purpose", String(200), nullable=False),
    Column("referral_id", String(36)),
    Column("subject_id", String(36)),
    Column("fields", JSON, nullable=False),
    Column("outcome", String(20), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

audit_head = Table(
    "audit_head", metadata,  # one row per chain: its last seq and hash (locked to append)
    Column("id", Integer, primary_key=True, autoincrement=False),  # the chain number
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)
