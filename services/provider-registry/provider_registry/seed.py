"""Demo directory for the embedded default (`referrals seed`, `make up`) and the tests.

Two organizations with one service each, at the fixed ids of :mod:`servicekit.demo`. Seeding
is idempotent and never overwrites live data: what already exists is left alone (an admin
may have changed capacity since), so a second run changes nothing and emits nothing.
No personal data: organizations, services and public sites only.
"""
from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from servicekit import demo
from servicekit.db import Database

from . import domain, handlers
from .tables import fetch_organization, fetch_service, location

TIMEZONE = "America/Los_Angeles"
_WEEKDAYS = ("MO", "TU", "WE", "TH", "FR")


def _site_id(service_id: str) -> str:
    """A stable id for a demo service's site, so re-seeding recognises it."""
    return str(uuid.uuid5(uuid.UUID(service_id), "site"))


ORGANIZATIONS: list[dict[str, Any]] = [
    {"id": demo.DEMO_ORG_ID, "name": demo.DEMO_ORG_NAME,
     "description": "Emergency shelter and housing navigation.",
     "notification_channels": ["in_app"]},
    {"id": demo.DEMO_ORG2_ID, "name": demo.DEMO_ORG2_NAME,
     "description": "Counselling and drop-in support for young people and families.",
     "notification_channels": ["in_app"]},
]

SERVICES: list[dict[str, Any]] = [
    {"id": demo.DEMO_SERVICE_ID, "organization_id": demo.DEMO_ORG_ID,
     "name": "Emergency Shelter Intake",
     "description": "24/7 intake for emergency shelter beds.",
     "categories": ["housing"], "minimum_age": 18, "maximum_age": 120,
     "languages": ["en", "es"],
     "service_area": domain.ServiceArea(radius_km=25.0),
     "schedule": domain.Schedule(always_open=True, timezone=TIMEZONE),
     "site": {"name": "Harbor Shelter", "latitude": 47.6062, "longitude": -122.3321},
     "capacity": domain.Capacity(maximum=20, accepting=True)},
    {"id": demo.DEMO_SERVICE2_ID, "organization_id": demo.DEMO_ORG2_ID,
     "name": "Youth Mental Health Drop-in",
     "description": "Walk-in mental-health support for ages 12 to 24.",
     "categories": ["mental_health", "youth"], "minimum_age": 12, "maximum_age": 24,
     "languages": ["en"],
     "service_area": domain.ServiceArea(radius_km=15.0),
     "schedule": domain.Schedule(always_open=False, timezone=TIMEZONE, hours=tuple(
         domain.OpeningHours(day, "09:00", "18:00") for day in _WEEKDAYS)),
     "site": {"name": "Northside Center", "latitude": 47.69, "longitude": -122.33},
     "capacity": domain.Capacity(maximum=10, accepting=True)},
]


def _service_body(spec: dict[str, Any], session: Session) -> dict[str, Any]:
    body = {k: v for k, v in spec.items() if k not in ("id", "site")}
    site_id = _site_id(spec["id"])
    if session.execute(select(location.c.id).where(location.c.id == site_id)).first():
        body["location_ids"] = [site_id]  # the service was removed, its site stayed
    else:
        body["locations"] = [{**spec["site"], "id": site_id}]
    return body


def _seed(session: Session) -> None:
    for org in ORGANIZATIONS:
        if fetch_organization(session, org["id"]) is None:
            handlers.create_organization(session, handlers.SYSTEM, org)
    for spec in SERVICES:
        if fetch_service(session, spec["id"]) is None:
            handlers.create_service(session, handlers.SYSTEM, _service_body(spec, session),
                                    service_id=spec["id"])


def seed_demo(db: Database) -> None:
    """Create the demo organizations and services that do not exist yet (idempotent)."""
    for attempt in (1, 2):
        try:
            with db.transaction() as session:
                _seed(session)
            return
        except handlers.Conflict:
            if attempt == 2:
                raise  # a concurrent seeder won the first time; the second pass sees it
