"""Event factories for matching's integration tests (envelopes as other services emit them)."""
from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from servicekit import events, geo

HOME = (51.5074, -0.1278)  # where the test residents are (central London)
ORG = "org-harbour"
_sequence = itertools.count(1)


def north_of_home(km: float, home: tuple[float, float] = HOME) -> tuple[float, float]:
    return home[0] + km / 111.2, home[1]


def service_upserted(service_id: str, *, km_north: float = 1.0, capacity: int = 5,
                     accepting: bool = True, updated_at: datetime | None = None,
                     home: tuple[float, float] = HOME, **overrides: Any) -> events.Envelope:
    """A housing service ``km_north`` of the residents, open 24/7, serving a 20 km radius."""
    lat, lon = north_of_home(km_north, home)
    data: dict[str, Any] = {
        "service_id": service_id, "organization_id": ORG, "organization_name": "Harbour Trust",
        "service_name": f"Shelter {service_id}", "status": "active", "categories": ["housing"],
        "locations": [{"location_id": f"loc-{service_id}", "lat": lat, "lon": lon,
                       "geohash": geo.encode(lat, lon, 9)}],
        "service_area": {"radius_km": 20.0, "geohashes": []},
        "age_min": None, "age_max": None, "genders": [], "populations": [],
        "languages": ["en"], "interpretation_available": False,
        "schedule": {"always_open": True, "timezone": "Europe/London", "hours": []},
        "capacity": {"maximum": capacity, "accepting": accepting, "available": None},
        "notification_channels": ["in_app"],
        "updated_at": updated_at or datetime.now(UTC),
        **overrides,
    }
    return events.new_event(events.PROVIDER_SERVICE_UPSERTED, subject=service_id,
                            sequence=next(_sequence), data=data, source="provider-registry")


def service_removed(service_id: str) -> events.Envelope:
    return events.new_event(events.PROVIDER_SERVICE_REMOVED, subject=service_id,
                            sequence=next(_sequence), source="provider-registry",
                            data={"service_id": service_id, "organization_id": ORG,
                                  "removed_at": datetime.now(UTC)})


def referral_submitted(referral_id: str | None = None, *, need: str = "housing",
                       urgency: str = "urgent", agency: str = "metro-pd",
                       home: tuple[float, float] = HOME, **eligibility: Any) -> events.Envelope:
    rid = referral_id or str(uuid.uuid4())
    data = {
        "referral_id": rid, "short_id": "R-7F3K", "need": need, "urgency": urgency,
        "coarse_location": geo.coarsen(*home),
        "eligibility": {"age": 34, "flags": [], **eligibility},
        "consent": {"share_with_provider": True, "referrer_updates": "milestones",
                    "contact_methods": ["phone"]},
        "agency_id": agency, "officer_ref": "off-5b2e91", "submitted_at": datetime.now(UTC),
    }
    return events.new_event(events.REFERRAL_SUBMITTED, subject=rid, sequence=next(_sequence),
                            data=data, source="referral-intake")


def status_changed(referral_id: str, from_status: str | None, to_status: str, *,
                   service_id: str | None = None, offer_status: str = "open",
                   reason_code: str | None = None, proposal_id: str | None = None,
                   attempt: int = 1) -> events.Envelope:
    offer = None if service_id is None else {
        "offer_id": str(uuid.uuid4()), "service_id": service_id, "organization_id": ORG,
        "expires_at": datetime.now(UTC) + timedelta(hours=4), "status": offer_status,
        "attempt": attempt}
    data = {
        "referral_id": referral_id, "short_id": "R-7F3K", "need": "housing",
        "urgency": "urgent", "agency_id": "metro-pd", "officer_ref": "off-5b2e91",
        "from_status": from_status, "to_status": to_status, "offer": offer,
        "reason_code": reason_code, "outcome_code": None, "actor_role": "system",
        "referrer_updates": "milestones", "proposal_id": proposal_id,
        "occurred_at": datetime.now(UTC),
    }
    return events.new_event(events.REFERRAL_STATUS_CHANGED, subject=referral_id,
                            sequence=next(_sequence), data=data, source="referral-intake")
