"""Event builders for the notifications tests: contract-valid data via servicekit.events.

Identifiers that must never reach notification text carry CANARY markers so the tests can
scan every title, body and link for them.
"""
from __future__ import annotations

import uuid
from typing import Any

from servicekit import events, geo

CANARY = "CANARY"
AGENCY = "agency-CANARY-a1"
OFFICER_REF = "officer-CANARY-ref"
ORG = "org-CANARY-1"
OTHER_ORG = "org-CANARY-2"
OCCURRED = "2026-03-02T14:00:00Z"
EXPIRES = "2026-03-02T14:30:00Z"


def offer(org: str = ORG, status: str = "open", expires_at: str = EXPIRES) -> dict[str, Any]:
    return {"offer_id": f"offer-{CANARY}-{uuid.uuid4().hex[:6]}",
            "service_id": f"svc-{CANARY}-1", "organization_id": org,
            "expires_at": expires_at, "status": status, "attempt": 1}


def status_changed(referral_id: str | None = None, *, from_status: str | None = "submitted",
                   to_status: str = "offered", offer_: dict[str, Any] | None = None,
                   referrer_updates: str = "milestones", reason_code: str | None = None,
                   short_id: str = "R-7F3K", need: str = "housing",
                   urgency: str = "urgent") -> dict[str, Any]:
    """``referral.status_changed`` data, validated against the public contract."""
    rid = referral_id or str(uuid.uuid4())
    data = {
        "referral_id": rid, "short_id": short_id, "need": need, "urgency": urgency,
        "agency_id": AGENCY, "officer_ref": OFFICER_REF, "from_status": from_status,
        "to_status": to_status, "offer": offer_, "reason_code": reason_code,
        "outcome_code": None, "actor_role": "system", "referrer_updates": referrer_updates,
        "proposal_id": f"proposal-{CANARY}", "occurred_at": OCCURRED,
    }
    return envelope(events.REFERRAL_STATUS_CHANGED, data).data


def envelope(event_type: str, data: dict[str, Any], sequence: int = 1,
             source: str = "referral-intake") -> events.Envelope:
    field = events.SUBJECT_FIELD[events.TOPIC_OF[event_type]]
    return events.new_event(event_type, subject=str(data[field]), sequence=sequence, data=data,
                            source=source)


def submitted(referrer_updates: str = "milestones") -> dict[str, Any]:
    rid = str(uuid.uuid4())
    data = {
        "referral_id": rid, "short_id": "R-9Q2W", "need": "mental_health",
        "urgency": "emergency",
        "coarse_location": dict(geo.coarsen(*geo.decode("u33dc0"))),
        "eligibility": {"age": 34}, "agency_id": AGENCY, "officer_ref": OFFICER_REF,
        "consent": {"share_with_provider": True, "referrer_updates": referrer_updates,
                    "contact_methods": ["phone"]},
        "submitted_at": OCCURRED,
    }
    return envelope(events.REFERRAL_SUBMITTED, data).data


def sla_breached(sla: str = "offer_response") -> dict[str, Any]:
    data = {"referral_id": str(uuid.uuid4()), "short_id": "R-5T6Y", "agency_id": AGENCY,
            "sla": sla, "need": "youth", "urgency": "routine", "due_at": "2026-03-01T09:15:00Z",
            "occurred_at": OCCURRED, "organization_id": ORG}
    return envelope(events.REFERRAL_SLA_BREACHED, data).data


def service_upserted(org: str, channels: list[str], updated_at: str,
                     service_id: str | None = None) -> events.Envelope:
    data = {
        "service_id": service_id or str(uuid.uuid4()), "organization_id": org,
        "organization_name": "Harbor Housing", "service_name": "Emergency beds",
        "status": "active", "categories": ["housing"], "locations": [],
        "service_area": {"radius_km": 10.0, "geohashes": []}, "age_min": None, "age_max": None,
        "genders": [], "populations": [], "languages": ["en"],
        "interpretation_available": False,
        "schedule": {"always_open": True, "timezone": "UTC", "hours": []},
        "capacity": {"maximum": 5, "accepting": True, "available": 2},
        "notification_channels": channels, "updated_at": updated_at,
    }
    return envelope(events.PROVIDER_SERVICE_UPSERTED, data, source="provider-registry")
