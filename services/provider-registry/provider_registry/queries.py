"""provider-registry read side: routing snapshots and the views the API returns.

Views of many services are assembled with one query per table for the whole set
(``load_services``: single views, HSDS export), never one query per service. Search pages
are assembled in one statement with their search by ``listing.py``, whose items must stay
exactly ``ServiceOut().dump(_view(...))`` (a test compares them).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import domain
from .search import TOTAL_CAP
from .tables import (
    _to_service,
    address,
    as_utc,
    location,
    one_of,
    organization,
    service,
    service_at_location,
    service_capacity,
    service_category,
)


class NotFound(Exception):
    pass


@dataclass(frozen=True)
class Loaded:
    """Everything the snapshot and the views need of one stored service."""

    org: domain.Organization
    svc: domain.Service
    locations: list[domain.Location]
    capacity: domain.Capacity
    description: str | None


def load_services(session: Session, ids: list[str]) -> dict[str, Loaded]:
    """The services named in ``ids`` that exist, each with its organization, sites and
    capacity, in five queries."""
    if not ids:
        return {}
    rows = session.execute(select(service).where(one_of(session, service.c.id, ids))).all()
    cats: dict[str, list[str]] = defaultdict(list)
    for sid, cat in session.execute(select(service_category.c.service_id,
                                           service_category.c.category)
                                    .where(one_of(session, service_category.c.service_id, ids))):
        cats[sid].append(cat)
    sites: dict[str, list[domain.Location]] = defaultdict(list)
    for r in session.execute(
            select(service_at_location.c.service_id, location)
            .join(location, service_at_location.c.location_id == location.c.id)
            .where(one_of(session, service_at_location.c.service_id, ids)).order_by(location.c.id)):
        sites[r.service_id].append(domain.Location(
            id=r.id, latitude=r.latitude, longitude=r.longitude, name=r.name,
            confidential=r.confidential))
    caps = {r.service_id: domain.Capacity(maximum=r.maximum, accepting=r.accepting,
                                          available=r.available)
            for r in session.execute(select(service_capacity)
                                     .where(one_of(session, service_capacity.c.service_id, ids)))}
    org_ids = {r.organization_id for r in rows}
    orgs = {r.id: domain.Organization(id=r.id, name=r.name,
                                      notification_channels=tuple(r.notification_channels))
            for r in session.execute(select(organization).where(
                one_of(session, organization.c.id, org_ids)))}
    return {r.id: Loaded(org=orgs[r.organization_id], svc=_to_service(r, cats[r.id]),
                         locations=sites[r.id], capacity=caps.get(r.id, domain.NO_CAPACITY),
                         description=r.description) for r in rows}


def _load_one(session: Session, service_id: str) -> Loaded:
    found = load_services(session, [service_id]).get(service_id)
    if found is None:
        raise NotFound(service_id)
    return found


def snapshot_of(session: Session, service_id: str) -> dict[str, Any]:
    """The routing snapshot of a stored service (``provider.service_upserted`` data)."""
    one = _load_one(session, service_id)
    return domain.routing_snapshot(one.org, one.svc, one.locations, one.capacity)


def _view(one: Loaded, *, reveal_confidential: bool, now: datetime,
          stale_after_days: int) -> dict[str, Any]:
    """The snapshot plus what people read; confidential sites keep only id and flag unless
    the caller may see them (admin, the organization's own staff)."""
    view = domain.routing_snapshot(one.org, one.svc, one.locations, one.capacity)
    names = {loc.id: loc.name for loc in one.locations}
    shown = []
    for entry in view["locations"]:
        if entry["confidential"] and not reveal_confidential:
            shown.append({"location_id": entry["location_id"], "confidential": True})
        else:
            shown.append({**entry, "name": names[entry["location_id"]]})
    view["locations"] = shown
    view["description"] = one.description
    view["stale"] = domain.is_stale(one.svc.last_confirmed, now, stale_after_days)
    return view


def service_views(session: Session, ids: list[str], *, may_reveal: Any, now: datetime,
                  stale_after_days: int) -> list[dict[str, Any]]:
    """Views of ``ids`` in that order; ``may_reveal(org_id)`` says whether confidential
    sites of that organization may be shown to the caller."""
    loaded = load_services(session, ids)
    return [_view(loaded[i], reveal_confidential=bool(may_reveal(loaded[i].org.id)), now=now,
                  stale_after_days=stale_after_days) for i in ids if i in loaded]


def service_view(session: Session, service_id: str, *, reveal_confidential: bool = True,
                 now: datetime | None = None, stale_after_days: int = 90) -> dict[str, Any]:
    """One service as the API shows it."""
    return _view(_load_one(session, service_id), reveal_confidential=reveal_confidential,
                 now=now or datetime.now(UTC), stale_after_days=stale_after_days)


def _organization_out(row: Any) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "description": row.description,
            "notification_channels": list(row.notification_channels),
            "last_modified": as_utc(row.last_modified)}


def organization_view(session: Session, org_id: str) -> dict[str, Any]:
    row = session.execute(select(organization).where(organization.c.id == org_id)).first()
    if row is None:
        raise NotFound(org_id)
    return _organization_out(row)


def _capped_total(session: Session, query: Any) -> int:
    """How many rows ``query`` selects, counted up to ``TOTAL_CAP + 1`` (the services
    list's convention: ``TOTAL_CAP + 1`` means more than ``TOTAL_CAP``)."""
    capped = query.limit(TOTAL_CAP + 1).subquery()
    return int(session.execute(select(func.count()).select_from(capped)).scalar_one())


def organization_page(session: Session, *, limit: int, offset: int
                      ) -> tuple[list[dict[str, Any]], int]:
    """Organizations by name (then id), one page, and the capped total."""
    rows = session.execute(select(organization).order_by(organization.c.name, organization.c.id)
                           .limit(limit).offset(offset)).all()
    return ([_organization_out(r) for r in rows],
            _capped_total(session, select(organization.c.id)))


ADDRESS_FIELDS = ("attention", "address_1", "address_2", "city", "region", "state_province",
                  "postal_code", "country", "address_type")


def _location_out(row: Any, addresses: list[dict[str, Any]], reveal: bool) -> dict[str, Any]:
    """A site as the API shows it. A confidential site (e.g. a domestic-violence shelter)
    shows only its id, organization and flag unless ``reveal`` (admin, its own staff),
    like the sites inside a service view."""
    if row.confidential and not reveal:
        return {"id": row.id, "organization_id": row.organization_id, "confidential": True}
    return {"id": row.id, "organization_id": row.organization_id, "name": row.name,
            "location_type": row.location_type, "description": row.description,
            "latitude": row.latitude, "longitude": row.longitude,
            "confidential": row.confidential, "addresses": addresses}


def _addresses_of(session: Session, location_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if location_ids:
        for r in session.execute(select(address).where(
                one_of(session, address.c.location_id, location_ids)).order_by(address.c.id)):
            out[r.location_id].append({k: getattr(r, k) for k in ADDRESS_FIELDS})
    return out


def location_view(session: Session, location_id: str, *, may_reveal: Any = None
                  ) -> dict[str, Any]:
    """One site; ``may_reveal(org_id)`` says whether the caller may see a confidential
    site of that organization (None: everything, for handlers and their writers)."""
    row = session.execute(select(location).where(location.c.id == location_id)).first()
    if row is None:
        raise NotFound(location_id)
    reveal = may_reveal is None or bool(may_reveal(row.organization_id))
    return _location_out(row, _addresses_of(session, [row.id])[row.id], reveal)


def location_page(session: Session, *, may_reveal: Any, limit: int, offset: int,
                  organization_id: str | None = None) -> tuple[list[dict[str, Any]], int]:
    """Sites by organization, then name, one page (optionally of one organization), and
    the capped total; confidential ones hidden as ``location_view`` hides them."""
    query = select(location)
    if organization_id is not None:
        query = query.where(location.c.organization_id == organization_id)
    rows = session.execute(query.order_by(location.c.organization_id, location.c.name,
                                          location.c.id).limit(limit).offset(offset)).all()
    reveal = {org: bool(may_reveal(org)) for org in {r.organization_id for r in rows}}
    shown = [r.id for r in rows if reveal[r.organization_id] or not r.confidential]
    addresses = _addresses_of(session, shown)
    return ([_location_out(r, addresses[r.id], reveal[r.organization_id]) for r in rows],
            _capped_total(session, query.with_only_columns(location.c.id)))
