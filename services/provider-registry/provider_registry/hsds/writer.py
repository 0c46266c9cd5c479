"""Bulk writes of checked HSDS bundles (one statement per table per chunk).

Organizations keep their notification channels (not an HSDS concept); services keep their
capacity; everything else an import carries replaces what was stored.
"""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import psycopg
import psycopg.sql
from sqlalchemy import JSON, Table, delete, insert, or_, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from servicekit.db import upsert

from .. import search_index
from .. import tables as t
from ..handlers import _publish, _service_values, language_codes
from . import taxonomy
from .mapping import Bundle


def insert_rows(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """Plain inserts of a chunk: COPY on PostgreSQL (a fraction of the CPU of an
    executemany, same transaction), executemany elsewhere. JSON columns go through
    SQLAlchemy, which knows how to bind them."""
    if not rows:
        return
    if session.get_bind().dialect.name != "postgresql" or any(
            isinstance(c.type, JSON) for c in table.columns):
        session.execute(insert(table), rows)
        return
    keys = set().union(*rows)
    columns = [c.name for c in table.columns if c.name in keys]
    statement = psycopg.sql.SQL("COPY {} ({}) FROM STDIN").format(
        psycopg.sql.Identifier(table.name),
        psycopg.sql.SQL(", ").join(map(psycopg.sql.Identifier, columns)))
    raw = session.connection().connection.driver_connection
    try:
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row([row.get(c) for c in columns])
    except psycopg.Error as exc:  # as SQLAlchemy would raise it: the importer retries alone
        raise DBAPIError(f"COPY {table.name}", None, exc) from exc


def _upsert(session: Session, table: Table, rows: list[dict[str, Any]],
            keep: tuple[str, ...] = ()) -> None:
    """Insert ``rows`` or update every column of the ones that exist, except ``keep``."""
    if not rows:
        return
    stmt = upsert(session, table)
    columns = [c for c in rows[0] if c != "id" and c not in keep]
    session.execute(stmt.on_conflict_do_update(
        index_elements=["id"], set_={c: stmt.excluded[c] for c in columns}), rows)


def _unique(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list({r["id"]: r for r in rows}.values())


def write_taxonomy(session: Session, taxonomies: list[dict[str, Any]],
                   terms: list[dict[str, Any]]) -> None:
    cols = [c.name for c in t.taxonomy.columns]
    _upsert(session, t.taxonomy, _unique([{c: x.get(c) for c in cols}
                                          for x in [taxonomy.TAXONOMY, *taxonomies]]))
    tcols = [c.name for c in t.taxonomy_term.columns]
    _upsert(session, t.taxonomy_term, _unique([{c: x.get(c) for c in tcols} for x in terms]))


def write_organizations(session: Session, rows: list[dict[str, Any]], now: datetime) -> int:
    rows = _unique(rows)
    full = [{**r, "notification_channels": ["in_app"], "created_at": now, "last_modified": now}
            for r in rows]
    _upsert(session, t.organization, full, keep=("notification_channels", "created_at"))
    return len(rows)


def write_phones(session: Session, phones: list[dict[str, Any]], *, service_ids: list[str],
                 location_ids: list[str], organization_ids: list[str]) -> None:
    """Replace the phones of these owners. HSDS may list one phone under its service, its
    location and its organization at once: the most specific owner keeps it."""
    by_id: dict[str, dict[str, Any]] = {}
    for p in phones:  # service phones first, then location, then organization
        by_id.setdefault(p["id"], p)
    session.execute(delete(t.phone).where(or_(
        t.one_of(session, t.phone.c.id, by_id),
        t.one_of(session, t.phone.c.service_id, service_ids),
        t.one_of(session, t.phone.c.location_id, location_ids),
        t.one_of(session, t.phone.c.organization_id, organization_ids) & t.phone.c.service_id.is_(None)
        & t.phone.c.location_id.is_(None))))
    insert_rows(session, t.phone, list(by_id.values()))


def write_bundles(session: Session, bundles: list[Bundle], now: datetime) -> None:
    orgs = [b.organization for b in bundles if b.organization]
    write_organizations(session, orgs, now)  # type: ignore[arg-type]
    write_taxonomy(session, [], [term for b in bundles for term in b.terms])
    locations = _unique([loc for b in bundles for loc in b.locations])
    loc_ids = [loc["id"] for loc in locations]
    _upsert(session, t.location, [
        {k: v for k, v in loc.items() if k not in ("addresses", "phones")}
        | {"created_at": now, "last_modified": now} for loc in locations], keep=("created_at",))
    session.execute(delete(t.address).where(t.one_of(session, t.address.c.location_id, loc_ids)))
    insert_rows(session, t.address, _unique([a for loc in locations for a in loc["addresses"]]))
    svc_ids = [b.service_id for b in bundles]
    _upsert(session, t.service, [
        {"id": b.service_id, **_service_values(b.service, b.service_row["description"]),
         **{k: v for k, v in b.service_row.items() if k != "description"},
         "created_at": now, "import_digest": b.digest} for b in bundles], keep=("created_at",))
    write_phones(session, [p for b in bundles for p in b.phones if p["service_id"]]
                 + [p for loc in locations for p in loc["phones"]]
                 + [p for b in bundles for p in b.phones if p["organization_id"]],
                 service_ids=svc_ids, location_ids=loc_ids,
                 organization_ids=[o["id"] for o in orgs if o])
    _write_links(session, bundles, svc_ids, loc_ids)


def _write_links(session: Session, bundles: list[Bundle], svc_ids: list[str],
                 loc_ids: list[str]) -> None:
    for table in (t.service_category, t.service_at_location, t.service_language):
        session.execute(delete(table).where(t.one_of(session, table.c.service_id, svc_ids)))
    session.execute(delete(t.attribute).where(
        t.one_of(session, t.attribute.c.link_id, svc_ids + loc_ids)))
    rows: dict[Table, list[dict[str, Any]]] = {
        t.service_category: [{"service_id": b.service_id, "category": c}
                             for b in bundles for c in b.service.categories],
        t.service_language: [{"service_id": b.service_id, "code": c}
                             for b in bundles for c in language_codes(b.service.languages)],
        t.service_at_location: [{"id": b.sal_ids[loc], "service_id": b.service_id,
                                 "location_id": loc} for b in bundles for loc in b.site_ids],
        t.attribute: _unique([a for b in bundles for a in b.attributes]),
    }
    for table, values in rows.items():
        insert_rows(session, table, values)
    # the search table of these services and of every other service at these sites
    search_index.refresh(session, service_ids=svc_ids, location_ids=loc_ids)


def write_capacities(session: Session, capacities: dict[str, Any], now: datetime) -> None:
    """Capacity for services that have none yet; live capacity is never overwritten."""
    if not capacities:
        return
    rows = [{"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"capacity:{sid}")), "service_id": sid,
             "maximum": c.maximum, "accepting": c.accepting, "available": c.available,
             "updated": now} for sid, c in capacities.items()]
    session.execute(upsert(session, t.service_capacity)
                    .on_conflict_do_nothing(index_elements=["service_id"]), rows)


def republish_neighbours(session: Session, touched: dict[str, set[str]], now: datetime) -> int:
    """Services not in the import whose organization or site the import changed get a
    fresh snapshot, once, at the end."""
    if not touched["org"] and not touched["loc"]:
        return 0
    ids = set(session.execute(select(t.service.c.id).where(
        t.one_of(session, t.service.c.organization_id, touched["org"]))).scalars())
    ids |= set(session.execute(select(t.service_at_location.c.service_id).where(
        t.one_of(session, t.service_at_location.c.location_id, touched["loc"]))).scalars())
    others = sorted(ids - touched["svc"])
    for service_id in others:
        session.execute(update(t.service).where(t.service.c.id == service_id)
                        .values(last_modified=now))
        _publish(session, service_id)
    return len(others)
