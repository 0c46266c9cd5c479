"""provider-registry read side: routing snapshots and the views the API returns."""
from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from . import domain
from .tables import (
    as_utc,
    fetch_capacity,
    fetch_description,
    fetch_locations_of_service,
    fetch_organization,
    fetch_service,
    location,
    organization,
    service,
    service_capacity,
    service_category,
)


class NotFound(Exception):
    pass


def _assemble(session: Session, service_id: str
              ) -> tuple[domain.Organization, domain.Service, list[domain.Location],
                         domain.Capacity]:
    svc = fetch_service(session, service_id)
    if svc is None:
        raise NotFound(service_id)
    org = fetch_organization(session, svc.organization_id)
    if org is None:  # impossible while the foreign key holds
        raise NotFound(svc.organization_id)
    return (org, svc, fetch_locations_of_service(session, service_id),
            fetch_capacity(session, service_id))


def snapshot_of(session: Session, service_id: str) -> dict[str, Any]:
    """The routing snapshot of a stored service (``provider.service_upserted`` data)."""
    return domain.routing_snapshot(*_assemble(session, service_id))


def service_view(session: Session, service_id: str) -> dict[str, Any]:
    """What the API shows: the routing snapshot plus description and location names."""
    org, svc, locations, capacity = _assemble(session, service_id)
    view = domain.routing_snapshot(org, svc, locations, capacity)
    names = {loc.id: loc.name for loc in locations}
    view["locations"] = [{**e, "name": names[e["location_id"]]} for e in view["locations"]]
    view["description"] = fetch_description(session, service_id)
    return view


def list_services(session: Session, *, need: str | None = None, accepting: bool | None = None,
                  organization_id: str | None = None, limit: int = 50, offset: int = 0
                  ) -> tuple[list[dict[str, Any]], int]:
    """A page of services (by name) matching the filters, and the total that match."""
    cond: list[ColumnElement[bool]] = []
    if need is not None:
        cond.append(service.c.id.in_(select(service_category.c.service_id)
                                     .where(service_category.c.category == need)))
    if accepting is not None:
        open_ids = select(service_capacity.c.service_id).where(
            service_capacity.c.accepting.is_(True))
        # a service without a capacity row is not accepting
        cond.append(service.c.id.in_(open_ids) if accepting else service.c.id.not_in(open_ids))
    if organization_id is not None:
        cond.append(service.c.organization_id == organization_id)
    total = session.execute(select(func.count()).select_from(service).where(*cond)).scalar_one()
    ids = session.execute(select(service.c.id).where(*cond)
                          .order_by(service.c.name, service.c.id)
                          .limit(limit).offset(offset)).scalars().all()
    return [service_view(session, i) for i in ids], int(total)


def organization_view(session: Session, org_id: str) -> dict[str, Any]:
    row = session.execute(select(organization).where(organization.c.id == org_id)).first()
    if row is None:
        raise NotFound(org_id)
    return {"id": row.id, "name": row.name, "description": row.description,
            "notification_channels": list(row.notification_channels),
            "last_modified": as_utc(row.last_modified)}


def location_view(session: Session, location_id: str) -> dict[str, Any]:
    row = session.execute(select(location).where(location.c.id == location_id)).first()
    if row is None:
        raise NotFound(location_id)
    return {"id": row.id, "organization_id": row.organization_id, "name": row.name,
            "location_type": row.location_type, "latitude": row.latitude,
            "longitude": row.longitude}
