"""Queries behind the HSDS read API and the export: pages of ids with the HSDS filters, and
the HSDS pagination envelope (``Page`` of ``openapi.json``)."""
from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.orm import Session

from .. import tables as t
from . import exporter, tabular, taxonomy


def envelope(contents: list[Any], total: int, page: int, per_page: int) -> dict[str, Any]:
    pages = max(1, math.ceil(total / per_page))
    return {"total_items": total, "total_pages": pages, "page_number": page,
            "size": len(contents), "first_page": page == 1, "last_page": page >= pages,
            "empty": total == 0, "contents": contents}


def _like(columns: list[Any], text: str | None) -> list[ColumnElement[bool]]:
    if not text:
        return []
    pattern = f"%{text.lower()}%"
    return [or_(*(func.lower(c).like(pattern) for c in columns))]


def _page(session: Session, query: Select[Any], order: Any, page: int, per_page: int
          ) -> tuple[list[str], int]:
    total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    ids = session.execute(query.order_by(order).limit(per_page)
                          .offset((page - 1) * per_page)).scalars().all()
    return list(ids), int(total)


def _services(search: str | None = None, taxonomy_term_id: str | None = None,
              taxonomy_id: str | None = None, organization_id: str | None = None,
              modified_after: datetime | None = None) -> Select[Any]:
    cond = _like([t.service.c.name, t.service.c.description], search)
    if taxonomy_term_id:
        cond.append(t.service.c.id.in_(select(t.attribute.c.link_id).where(
            t.attribute.c.taxonomy_term_id == taxonomy_term_id)))
    if taxonomy_id:
        cond.append(t.service.c.id.in_(
            select(t.attribute.c.link_id).join(
                t.taxonomy_term, t.taxonomy_term.c.id == t.attribute.c.taxonomy_term_id)
            .where(t.taxonomy_term.c.taxonomy_id == taxonomy_id)))
    if organization_id:
        cond.append(t.service.c.organization_id == organization_id)
    if modified_after:
        cond.append(t.service.c.last_modified >= modified_after)
    return select(t.service.c.id).where(*cond)


def service_ids(session: Session, *, page: int, per_page: int, **filters: Any
                ) -> tuple[list[str], int]:
    return _page(session, _services(**filters), t.service.c.id, page, per_page)


def service_list_item(doc: dict[str, Any]) -> dict[str, Any]:
    """``service_list``: the one-to-one fields and the organization."""
    return {k: v for k, v in doc.items() if k not in tabular.NESTED} | {
        "organization": {k: v for k, v in doc["organization"].items()
                         if k not in ("phones", "contacts")}}


def organization_ids(session: Session, *, page: int, per_page: int,
                     search: str | None = None) -> tuple[list[str], int]:
    cond = _like([t.organization.c.name, t.organization.c.description], search)
    return _page(session, select(t.organization.c.id).where(*cond), t.organization.c.id,
                 page, per_page)


def organizations(session: Session, ids: list[str]) -> list[dict[str, Any]]:
    rows = {r.id: r for r in session.execute(select(t.organization)
                                             .where(t.organization.c.id.in_(ids)))}
    phones = exporter._rows_by(session, t.phone, t.phone.c.organization_id, ids)
    c = t.contact.c
    contacts = exporter.contacts_by_owner(session, c.organization_id.in_(ids)
                                          & c.service_id.is_(None) & c.location_id.is_(None)
                                          & c.service_at_location_id.is_(None))
    return [exporter.prune(exporter.organization_document(
        rows[i], phones[i], contacts[("organization_id", i)])) for i in ids if i in rows]


def services_of(session: Session, org_id: str) -> list[str]:
    return list(session.execute(select(t.service.c.id).where(
        t.service.c.organization_id == org_id).order_by(t.service.c.id)).scalars())


def taxonomies(session: Session, *, page: int, per_page: int, search: str | None = None,
               only: str | None = None) -> tuple[list[dict[str, Any]], int]:
    cond = _like([t.taxonomy.c.name, t.taxonomy.c.description], search)
    if only:
        cond.append(t.taxonomy.c.id == only)
    query = select(t.taxonomy).where(*cond)
    total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    rows = session.execute(query.order_by(t.taxonomy.c.id).limit(per_page)
                           .offset((page - 1) * per_page)).all()
    return [exporter.prune(dict(r._mapping)) for r in rows], int(total)


def terms(session: Session, *, page: int, per_page: int, search: str | None = None,
          taxonomy_id: str | None = None, parent_id: str | None = None,
          top_only: bool | None = None, only: str | None = None
          ) -> tuple[list[dict[str, Any]], int]:
    tt = t.taxonomy_term
    cond = _like([tt.c.name, tt.c.description, tt.c.code], search)
    cond += [c for c in (tt.c.taxonomy_id == taxonomy_id if taxonomy_id else None,
                         tt.c.parent_id == parent_id if parent_id else None,
                         tt.c.parent_id.is_(None) if top_only else None,
                         tt.c.id == only if only else None) if c is not None]
    query = select(tt).where(*cond)
    total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    rows = session.execute(query.order_by(tt.c.id).limit(per_page)
                           .offset((page - 1) * per_page)).all()
    return [exporter.prune(dict(r._mapping)) for r in rows], int(total)


def stored_taxonomies(session: Session) -> list[dict[str, Any]]:
    rows = [exporter.prune(dict(r._mapping)) for r in session.execute(select(t.taxonomy))]
    if not any(r["id"] == taxonomy.TAXONOMY_ID for r in rows):
        rows.append(exporter.prune(dict(taxonomy.TAXONOMY)))
    return rows


def sal_ids(session: Session, *, page: int, per_page: int, **filters: Any
            ) -> tuple[list[tuple[str, str]], int]:
    """(service_at_location id, service id) pairs of services matching the filters."""
    query = (select(t.service_at_location.c.id, t.service_at_location.c.service_id)
             .where(t.service_at_location.c.service_id.in_(_services(**filters))))
    total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    rows = session.execute(query.order_by(t.service_at_location.c.id).limit(per_page)
                           .offset((page - 1) * per_page)).all()
    return [(r.id, r.service_id) for r in rows], int(total)


def service_of_sal(session: Session, sal_id: str) -> str | None:
    return session.execute(select(t.service_at_location.c.service_id).where(
        t.service_at_location.c.id == sal_id)).scalar_one_or_none()


def all_service_ids(session: Session) -> list[str]:
    return list(session.execute(select(t.service.c.id).order_by(t.service.c.id)).scalars())
