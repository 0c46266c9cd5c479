"""provider-registry use cases. Handlers take the open session and never commit.

Every change that alters what matching or notifications know about a service emits that
service's FULL routing snapshot (``provider.service_upserted``) in the same transaction,
so a consumer never has to merge partial updates. Changes lock the service rows first, so
the snapshots of one service are built and sequenced one at a time.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from servicekit import events, outbox
from servicekit.auth import AuthError, Principal, same_org
from servicekit.db import locked

from . import domain, search_index
from .queries import NotFound, location_view, organization_view, service_view, snapshot_of
from .tables import (
    address,
    attribute,
    fetch_organization,
    fetch_service,
    location,
    location_organizations,
    organization,
    phone,
    service,
    service_at_location,
    service_capacity,
    service_category,
    service_ids_at_location,
    service_ids_of_organization,
    service_language,
    service_site_need,
)

SOURCE = "provider-registry"
SYSTEM = Principal(sub="provider-registry", role="admin")  # seed and maintenance commands

class Conflict(Exception):
    """The request contradicts the directory's current state (answered 409). ``errors``
    names what stands in the way (field -> ids or messages; never personal data)."""

    def __init__(self, message: str, errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return str(uuid.uuid4())


def _unique(values: Iterable[Any]) -> list[str]:
    return list(dict.fromkeys(str(v) for v in values))


def authorize(principal: Principal, org_id: str) -> None:
    """Admins manage every organization; provider staff only their own."""
    if principal.role == "admin" or (principal.role == "provider" and same_org(principal, org_id)):
        return
    raise AuthError("not your organization", 403)


def _insert_new(session: Session, table: Any, values: dict[str, Any], what: str) -> None:
    """Insert a row whose id may already exist; a duplicate becomes ``Conflict``."""
    try:
        with session.begin_nested():
            session.execute(insert(table).values(**values))
    except IntegrityError:
        raise Conflict(f"{what} {values['id']} already exists") from None


# --- publishing ---------------------------------------------------------------------------

def _publish(session: Session, service_id: str) -> None:
    outbox.emit(session, events.PROVIDER_SERVICE_UPSERTED, subject=service_id, source=SOURCE,
                data=snapshot_of(session, service_id))


def _touch_and_publish(session: Session, service_ids: list[str], now: datetime) -> None:
    """Re-publish services whose snapshot changed through their organization or a site."""
    for service_id in service_ids:
        session.execute(update(service).where(service.c.id == service_id)
                        .values(last_modified=now))
        _publish(session, service_id)


def republish_all(session: Session) -> int:
    """Emit the current snapshot of every service again (e.g. to rebuild matching's view).

    Returns how many services were published. Removed services are not repeated: their
    ``provider.service_removed`` is already on the topic.
    """
    ids = list(session.execute(select(service.c.id).order_by(service.c.id)).scalars())
    for service_id in ids:
        if fetch_service(session, service_id, lock=True) is not None:
            _publish(session, service_id)
    return len(ids)


# --- organizations ------------------------------------------------------------------------

def _org_values(body: dict[str, Any]) -> dict[str, Any]:
    return {"name": body["name"], "description": body.get("description"),
            "notification_channels": _unique(body.get("notification_channels", ["in_app"]))}


def create_organization(session: Session, principal: Principal, body: dict[str, Any]
                        ) -> dict[str, Any]:
    """Create an organization. A provider may only register its own (``id`` = its org)."""
    default_id = principal.org if principal.role == "provider" else None
    org_id = str(body.get("id") or default_id or _new_id())
    authorize(principal, org_id)
    now = _now()
    _insert_new(session, organization, {"id": org_id, **_org_values(body), "created_at": now,
                                        "last_modified": now}, "organization")
    return organization_view(session, org_id)


def update_organization(session: Session, principal: Principal, org_id: str,
                        body: dict[str, Any]) -> dict[str, Any]:
    """Replace an organization's fields and re-publish every service it runs."""
    if fetch_organization(session, org_id) is None:
        raise NotFound(org_id)
    authorize(principal, org_id)
    now = _now()
    session.execute(update(organization).where(organization.c.id == org_id)
                    .values(**_org_values(body), last_modified=now))
    _touch_and_publish(session, service_ids_of_organization(session, org_id, lock=True), now)
    return organization_view(session, org_id)


def delete_organization(session: Session, principal: Principal, org_id: str) -> None:
    """Remove an organization that runs no services, with its sites (their links,
    addresses, phones, attributes) and its own phones, in the caller's transaction.

    An organization that still runs services is refused (``Conflict`` naming them): each
    service is deleted (``provider.service_removed``) or moved first, so no consumer is
    left with a service whose organization vanished."""
    if fetch_organization(session, org_id) is None:
        raise NotFound(org_id)
    authorize(principal, org_id)
    # the row lock waits for any transaction adding a service or site to it (their foreign
    # key check holds a share lock on this row), so the check below sees them
    session.execute(locked(session, select(organization.c.id).where(organization.c.id == org_id)))
    if running := service_ids_of_organization(session, org_id):
        raise Conflict(f"Organization {org_id} still runs {len(running)} service(s); delete "
                       "or move them first", {"services": running})
    now = _now()
    site_ids = list(session.execute(select(location.c.id).where(
        location.c.organization_id == org_id).order_by(location.c.id)).scalars())
    for site_id in site_ids:
        _remove_location(session, site_id, now)
    session.execute(delete(attribute).where(attribute.c.link_id == org_id,
                                            attribute.c.link_entity == "organization"))
    session.execute(delete(phone).where(phone.c.organization_id == org_id))
    session.execute(delete(organization).where(organization.c.id == org_id))


# --- locations ----------------------------------------------------------------------------

def _location_values(body: dict[str, Any]) -> dict[str, Any]:
    return {"name": body.get("name"), "location_type": body.get("location_type", "physical"),
            "latitude": body["latitude"], "longitude": body["longitude"],
            "confidential": bool(body.get("confidential", False))}


def _insert_location(session: Session, org_id: str, body: dict[str, Any], now: datetime,
                     location_id: str | None = None) -> str:
    new_id = location_id or _new_id()
    _insert_new(session, location, {"id": new_id, "organization_id": org_id,
                                    **_location_values(body), "created_at": now,
                                    "last_modified": now}, "location")
    return new_id


def create_location(session: Session, principal: Principal, body: dict[str, Any], *,
                    location_id: str | None = None) -> dict[str, Any]:
    org_id = str(body["organization_id"])
    authorize(principal, org_id)
    if fetch_organization(session, org_id) is None:
        raise domain.RuleViolation({"organization_id": ["No such organization."]})
    return location_view(session, _insert_location(session, org_id, body, _now(), location_id))


def update_location(session: Session, principal: Principal, location_id: str,
                    body: dict[str, Any]) -> dict[str, Any]:
    """Move or rename a site and re-publish every service offered there."""
    authorize(principal, location_view(session, location_id)["organization_id"])
    now = _now()
    session.execute(update(location).where(location.c.id == location_id)
                    .values(**_location_values(body), last_modified=now))
    search_index.refresh(session, location_ids=[location_id])
    _touch_and_publish(session, service_ids_at_location(session, location_id, lock=True), now)
    return location_view(session, location_id)


def delete_location(session: Session, principal: Principal, location_id: str) -> None:
    """Remove a site and its service-at-location links; re-publish every service that was
    offered there (its snapshot loses the site), all in the caller's transaction."""
    authorize(principal, location_view(session, location_id)["organization_id"])
    _remove_location(session, location_id, _now())


def _remove_location(session: Session, location_id: str, now: datetime) -> None:
    """Delete a site with everything hanging off it and re-publish the services offered
    there. Refused (``Conflict``) when a service would be left breaking its rules (a
    radius service area measured from its only site)."""
    service_ids_at_location(session, location_id, lock=True)  # services first, as updates do
    session.execute(locked(session, select(location.c.id).where(location.c.id == location_id)))
    affected = service_ids_at_location(session, location_id, lock=True)  # + any linked meanwhile
    stranded = [sid for sid in affected if _breaks_rules_without(session, sid, location_id)]
    if stranded:
        raise Conflict(f"Location {location_id} is the only site of {len(stranded)} service(s) "
                       "whose service area is a radius around their sites; give them another "
                       "site or a geohash service area first", {"services": stranded})
    session.execute(delete(service_at_location)
                    .where(service_at_location.c.location_id == location_id))
    search_index.refresh(session, service_ids=affected, location_ids=[location_id])
    session.execute(delete(attribute).where(attribute.c.link_id == location_id,
                                            attribute.c.link_entity == "location"))
    session.execute(delete(address).where(address.c.location_id == location_id))
    session.execute(delete(phone).where(phone.c.location_id == location_id))
    session.execute(delete(location).where(location.c.id == location_id))
    _touch_and_publish(session, affected, now)


def _breaks_rules_without(session: Session, service_id: str, location_id: str) -> bool:
    """True when removing the site makes the service's area rule fail (a rule it met)."""
    svc = fetch_service(session, service_id)
    others = len(session.execute(select(service_at_location.c.location_id).where(
        service_at_location.c.service_id == service_id,
        service_at_location.c.location_id != location_id)).all())
    return svc is not None and bool(domain.area_errors(svc.service_area, others)) and not \
        domain.area_errors(svc.service_area, others + 1)


# --- services -----------------------------------------------------------------------------

def _service_from_body(service_id: str, org_id: str, body: dict[str, Any], now: datetime
                       ) -> domain.Service:
    return domain.Service(
        id=service_id, organization_id=org_id, name=body["name"],
        status=body.get("status", "active"), categories=tuple(_unique(body["categories"])),
        minimum_age=body.get("minimum_age"), maximum_age=body.get("maximum_age"),
        genders=tuple(_unique(body.get("genders", []))),
        populations=tuple(_unique(body.get("populations", []))),
        languages=tuple(_unique(body.get("languages", []))),
        interpretation_available=bool(body.get("interpretation_available", False)),
        service_area=body["service_area"], schedule=body["schedule"], last_modified=now,
        last_confirmed=now)


def _service_values(svc: domain.Service, description: str | None) -> dict[str, Any]:
    return {
        "organization_id": svc.organization_id, "name": svc.name, "description": description,
        "status": svc.status, "minimum_age": svc.minimum_age, "maximum_age": svc.maximum_age,
        "interpretation_available": svc.interpretation_available,
        "genders": list(svc.genders), "populations": list(svc.populations),
        "languages": list(svc.languages),
        "service_area_radius_km": svc.service_area.radius_km,
        "service_area_geohashes": list(svc.service_area.geohashes),
        "always_open": svc.schedule.always_open, "timezone": svc.schedule.timezone,
        "opening_hours": [{"byday": h.byday, "opens_at": h.opens_at, "closes_at": h.closes_at}
                          for h in svc.schedule.hours],  # not asdict(): hot in bulk imports
        "schedule_valid_from": svc.schedule.valid_from,
        "schedule_valid_to": svc.schedule.valid_to,
        "last_modified": svc.last_modified, "last_confirmed": svc.last_confirmed,
        "import_digest": None,  # edited since the last import: re-importing must apply again
    }


def _site_ids(session: Session, org_id: str, body: dict[str, Any], now: datetime) -> list[str]:
    """Existing sites named in ``location_ids`` (same organization) plus new ``locations``."""
    existing = _unique(body.get("location_ids", []))
    owners = location_organizations(session, existing)
    foreign = [i for i in existing if owners.get(i) != org_id]
    if foreign:
        raise domain.RuleViolation(
            {"location_ids": [f"Not a location of organization {org_id}: {', '.join(foreign)}"]})
    created = [_insert_location(session, org_id, loc, now, loc.get("id"))
               for loc in body.get("locations", [])]
    return existing + created


def _write_capacity(session: Session, service_id: str, capacity: domain.Capacity,
                    now: datetime) -> None:
    domain.check_capacity(capacity)
    values = {"maximum": capacity.maximum, "accepting": capacity.accepting,
              "available": capacity.available, "updated": now}
    mine = service_capacity.c.service_id == service_id
    if session.execute(select(service_capacity.c.id).where(mine)).first():  # service row locked
        session.execute(update(service_capacity).where(mine).values(**values))
    else:
        session.execute(insert(service_capacity).values(id=_new_id(), service_id=service_id,
                                                        **values))


def language_codes(languages: Iterable[str]) -> list[str]:
    """Primary subtags, lower case: what the language search filter matches ("es-MX" -> "es")."""
    return list(dict.fromkeys(tag.split("-")[0].lower() for tag in languages))


def _write_links(session: Session, svc: domain.Service, site_ids: list[str]) -> None:
    for table in (service_category, service_at_location, service_language):
        session.execute(delete(table).where(table.c.service_id == svc.id))
    if codes := language_codes(svc.languages):
        session.execute(insert(service_language),
                        [{"service_id": svc.id, "code": c} for c in codes])
    if svc.categories:
        session.execute(insert(service_category),
                        [{"service_id": svc.id, "category": c} for c in svc.categories])
    if site_ids:
        session.execute(insert(service_at_location),
                        [{"id": _new_id(), "service_id": svc.id, "location_id": i}
                         for i in site_ids])
    search_index.refresh(session, service_ids=[svc.id])


def create_service(session: Session, principal: Principal, body: dict[str, Any], *,
                   service_id: str | None = None) -> dict[str, Any]:
    """Create a service (with new or existing sites, optionally its capacity); publish it."""
    org_id = str(body["organization_id"])
    authorize(principal, org_id)
    if fetch_organization(session, org_id) is None:
        raise domain.RuleViolation({"organization_id": ["No such organization."]})
    now = _now()
    svc = _service_from_body(service_id or _new_id(), org_id, body, now)
    sites = _site_ids(session, org_id, body, now)
    domain.check_service(svc, len(sites))
    _insert_new(session, service, {"id": svc.id, **_service_values(svc, body.get("description")),
                                   "created_at": now}, "service")
    _write_links(session, svc, sites)
    if body.get("capacity") is not None:
        _write_capacity(session, svc.id, body["capacity"], now)
    _publish(session, svc.id)
    return service_view(session, svc.id)


def _locked_service(session: Session, principal: Principal, service_id: str) -> domain.Service:
    current = fetch_service(session, service_id, lock=True)
    if current is None:
        raise NotFound(service_id)
    authorize(principal, current.organization_id)
    return current


def update_service(session: Session, principal: Principal, service_id: str,
                   body: dict[str, Any]) -> dict[str, Any]:
    """Replace a service's fields, sites (and capacity when given); publish it."""
    current = _locked_service(session, principal, service_id)
    now = _now()
    svc = _service_from_body(service_id, current.organization_id, body, now)
    sites = _site_ids(session, current.organization_id, body, now)
    domain.check_service(svc, len(sites))
    session.execute(update(service).where(service.c.id == service_id)
                    .values(**_service_values(svc, body.get("description"))))
    _write_links(session, svc, sites)
    if body.get("capacity") is not None:
        _write_capacity(session, service_id, body["capacity"], now)
    _publish(session, service_id)
    return service_view(session, service_id)


def set_capacity(session: Session, principal: Principal, service_id: str,
                 capacity: domain.Capacity) -> dict[str, Any]:
    """Set a service's capacity and accepting flag (admin, or the owning provider)."""
    _locked_service(session, principal, service_id)
    now = _now()
    _write_capacity(session, service_id, capacity, now)
    session.execute(update(service).where(service.c.id == service_id)
                    .values(last_modified=now, last_confirmed=now))
    _publish(session, service_id)
    return service_view(session, service_id)


def delete_service(session: Session, principal: Principal, service_id: str) -> None:
    """Remove a service (its sites stay with the organization); emit the removal."""
    current = _locked_service(session, principal, service_id)
    for table in (service_site_need, service_capacity, service_category, service_at_location,
                  service_language):
        session.execute(delete(table).where(table.c.service_id == service_id))
    session.execute(delete(attribute).where(attribute.c.link_id == service_id))
    session.execute(delete(phone).where(phone.c.service_id == service_id))
    session.execute(delete(service).where(service.c.id == service_id))
    outbox.emit(session, events.PROVIDER_SERVICE_REMOVED, subject=service_id, source=SOURCE,
                data=domain.removal_notice(service_id, current.organization_id, _now()))
