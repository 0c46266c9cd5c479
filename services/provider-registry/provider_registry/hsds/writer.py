"""Bulk writes of checked HSDS bundles (one statement per table per chunk).

Organizations keep their notification channels (not an HSDS concept); services keep their
capacity; everything else an import carries replaces what was stored.
"""
from __future__ import annotations

import json
import uuid
from datetime import date, datetime
from functools import lru_cache
from operator import itemgetter
from typing import Any

import psycopg
import psycopg.sql
from sqlalchemy import JSON, Table, delete, insert, or_, select, text, update
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
    if len(columns) > 1 and sum(map(len, rows)) == len(keys) * len(rows):
        values: Any = map(itemgetter(*columns), rows)  # every row has every column
    else:
        values = ([row.get(c) for c in columns] for row in rows)
    statement = psycopg.sql.SQL("COPY {} ({}) FROM STDIN").format(
        psycopg.sql.Identifier(table.name),
        psycopg.sql.SQL(", ").join(map(psycopg.sql.Identifier, columns)))
    raw = session.connection().connection.driver_connection
    try:
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            for value in values:
                copy.write_row(value)
    except psycopg.Error as exc:  # as SQLAlchemy would raise it: the importer retries alone
        raise DBAPIError(f"COPY {table.name}", None, exc) from exc


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()  # PostgreSQL reads ISO 8601 back exactly (microseconds, offset)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@lru_cache(maxsize=64)
def _recordset_upsert(table: Table, columns: tuple[str, ...], update: tuple[str, ...],
                      conflict: str) -> Any:
    """``INSERT ... SELECT ... FROM json_populate_recordset(NULL::table, :rows) ON CONFLICT``:
    a whole chunk in one statement with one parameter (the rows as one JSON text, which
    PostgreSQL turns into rows of the table's own column types)."""
    cols = ", ".join(f'"{c}"' for c in columns)
    action = ("DO NOTHING" if not update else "DO UPDATE SET " + ", ".join(
        f'"{c}" = EXCLUDED."{c}"' for c in update))
    return text(f'INSERT INTO "{table.name}" ({cols}) SELECT {cols} FROM '
                f'json_populate_recordset(NULL::"{table.name}", CAST(:rows AS json)) '
                f'ON CONFLICT ("{conflict}") {action}')


def _upsert(session: Session, table: Table, rows: list[dict[str, Any]],
            keep: tuple[str, ...] = (), *, conflict: str = "id", update: bool = True) -> None:
    """Insert ``rows`` or update every column of the ones that exist, except ``keep`` (or,
    ``update=False``, leave existing ones alone). On PostgreSQL one statement per call
    (``_recordset_upsert``; the rows of one call must have distinct ``conflict`` values, as
    one INSERT cannot update a row twice); elsewhere an executemany."""
    if not rows:
        return
    columns = tuple(rows[0])
    if any(tuple(r) != columns for r in rows) or not set(columns) <= set(table.c.keys()):
        raise ValueError(f"rows for {table.name} must all have the same known columns")
    changed = tuple(c for c in columns if c != conflict and c not in keep) if update else ()
    if session.get_bind().dialect.name == "postgresql":
        payload = json.dumps(rows, default=_json_value, allow_nan=False)
        session.execute(_recordset_upsert(table, columns, changed, conflict), {"rows": payload})
        return
    stmt = upsert(session, table)
    session.execute(stmt.on_conflict_do_update(
        index_elements=[conflict], set_={c: stmt.excluded[c] for c in changed}) if changed
        else stmt.on_conflict_do_nothing(index_elements=[conflict]), rows)


def _unique(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list({r["id"]: r for r in rows}.values())


def write_taxonomy(session: Session, taxonomies: list[dict[str, Any]],
                   terms: list[dict[str, Any]]) -> None:
    cols = [c.name for c in t.taxonomy.columns]
    _upsert(session, t.taxonomy, _unique([{c: x.get(c) for c in cols}
                                          for x in [taxonomy.TAXONOMY, *taxonomies]]))
    tcols = [c.name for c in t.taxonomy_term.columns]
    # the bundles of a chunk name the same few terms thousands of times: pick each once
    # (``_unique``: the last of an id, in the place of its first) before building rows
    _upsert(session, t.taxonomy_term, [{c: x.get(c) for c in tcols} for x in _unique(terms)])


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
        & t.phone.c.location_id.is_(None) & t.phone.c.contact_id.is_(None))))
    insert_rows(session, t.phone, list(by_id.values()))


def kept_contacts(session: Session, hidden_location_ids: list[str]) -> list[dict[str, Any]]:
    """The stored contacts (with their phones) of locations an import carries hidden
    (exported confidential: no coordinates, no contacts): an import keeps them as it keeps
    the coordinates. Read before the links are rewritten (a service-at-location's contacts
    go with it)."""
    if not hidden_location_ids:
        return []
    c, sal = t.contact.c, t.service_at_location.c
    rows = [dict(r._mapping) for r in session.execute(select(t.contact).where(or_(
        c.service_at_location_id.in_(select(sal.id).where(
            t.one_of(session, sal.location_id, hidden_location_ids))),
        c.service_at_location_id.is_(None)
        & t.one_of(session, c.location_id, hidden_location_ids))).order_by(c.id))]
    phones: dict[str, list[dict[str, Any]]] = {}
    if rows:
        for p in session.execute(select(t.phone).where(t.one_of(
                session, t.phone.c.contact_id, [r["id"] for r in rows])).order_by(t.phone.c.id)):
            phones.setdefault(p.contact_id, []).append(dict(p._mapping))
    return [r | {"phones": phones.get(r["id"], [])} for r in rows]


def write_contacts(session: Session, contacts: list[dict[str, Any]], *,
                   service_ids: list[str], location_ids: list[str], sal_ids: list[str],
                   organization_ids: list[str], kept: list[dict[str, Any]] | None = None
                   ) -> list[dict[str, Any]]:
    """Replace the contacts whose most specific owner (service at location, location,
    service, organization: where the export lists them) is one of these, and put back
    ``kept`` (``kept_contacts``) unless the import carries the same contact. The phones
    of the contacts written, for ``write_phones``."""
    c = t.contact.c
    kept = kept or []
    fresh = {row["id"]: row for row in contacts}
    sals = set(session.execute(select(t.service_at_location.c.id).where(t.one_of(
        session, t.service_at_location.c.id,
        [k["service_at_location_id"] for k in kept if k["service_at_location_id"]])))
        .scalars()) if kept else set()
    kept = [k for k in kept if k["id"] not in fresh
            and (k["service_at_location_id"] is None or k["service_at_location_id"] in sals)]
    no_sal, no_loc, no_svc = (c.service_at_location_id.is_(None), c.location_id.is_(None),
                              c.service_id.is_(None))
    session.execute(delete(t.contact).where(or_(
        t.one_of(session, c.id, [*fresh, *(k["id"] for k in kept)]),
        t.one_of(session, c.service_at_location_id, sal_ids),
        no_sal & t.one_of(session, c.location_id, location_ids),
        no_sal & no_loc & t.one_of(session, c.service_id, service_ids),
        no_sal & no_loc & no_svc & t.one_of(session, c.organization_id, organization_ids))))
    rows = [*fresh.values(), *kept]
    insert_rows(session, t.contact, [{k: v for k, v in row.items() if k != "phones"}
                                     for row in rows])
    return [p for row in rows for p in row["phones"]]


def write_bundles(session: Session, bundles: list[Bundle], now: datetime
                  ) -> dict[str, dict[str, Any]]:
    """Write checked bundles; returns the location rows written, by id (a location several
    bundles carry is written once, as the last of them has it)."""
    orgs = [b.organization for b in bundles if b.organization]
    write_organizations(session, orgs, now)  # type: ignore[arg-type]
    write_taxonomy(session, [], [term for b in bundles for term in b.terms])
    locations = _unique([loc for b in bundles for loc in b.locations])
    kept = kept_contacts(session, [loc["id"] for loc in locations if loc.get("hidden")])
    _upsert(session, t.location, [
        {k: v for k, v in loc.items() if k not in ("addresses", "phones", "hidden")}
        | {"created_at": now, "last_modified": now} for loc in locations], keep=("created_at",))
    # a site carried hidden (an export hides a confidential site's coordinates, addresses and
    # phones) keeps what is stored of them unless the import brings its own
    def replaced(kind: str) -> list[str]:
        return [loc["id"] for loc in locations if loc[kind] or not loc.get("hidden")]

    session.execute(delete(t.address).where(t.one_of(session, t.address.c.location_id,
                                                     replaced("addresses"))))
    insert_rows(session, t.address, _unique([a for loc in locations for a in loc["addresses"]]))
    svc_ids = [b.service_id for b in bundles]
    _upsert(session, t.service, [
        {"id": b.service_id, **_service_values(b.service, b.service_row["description"]),
         **{k: v for k, v in b.service_row.items() if k != "description"},
         "created_at": now, "import_digest": b.digest} for b in bundles], keep=("created_at",))
    written = {loc["id"]: loc for loc in locations}
    _write_links(session, bundles, svc_ids, written)
    org_ids = [o["id"] for o in orgs if o]
    contact_phones = write_contacts(
        session, _unique([c for b in bundles for c in b.contacts]), service_ids=svc_ids,
        location_ids=[loc["id"] for loc in locations if not loc.get("hidden")],
        sal_ids=[i for b in bundles for i in b.sal_ids.values()], organization_ids=org_ids,
        kept=kept)
    write_phones(session, [p for b in bundles for p in b.phones if p["service_id"]]
                 + [p for loc in locations for p in loc["phones"]]
                 + [p for b in bundles for p in b.phones if p["organization_id"]]
                 + contact_phones,
                 service_ids=svc_ids, location_ids=replaced("phones"), organization_ids=org_ids)
    return written


def _write_links(session: Session, bundles: list[Bundle], svc_ids: list[str],
                 locations: dict[str, dict[str, Any]]) -> None:
    loc_ids = list(locations)
    for table in (t.service_category, t.service_at_location, t.service_language,
                  t.service_site_need):
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
        # the search table rows of these services, from what was just written (the
        # categories, the sites and their coordinates as stored): search_index.rows_of
        t.service_site_need: [row for b in bundles for row in search_index.rows_of(
            b.service_id, b.service.categories, b.service.interpretation_available,
            [(i, locations[i]["latitude"], locations[i]["longitude"]) for i in b.site_ids])],
    }
    for table, values in rows.items():
        insert_rows(session, table, values)
    # every other service at these sites: a moved site moves them too (the chunk's own
    # services are most of the links at its sites: left out by the database, not fetched)
    sal = t.service_at_location.c
    others = set(session.execute(select(sal.service_id).where(
        t.one_of(session, sal.location_id, loc_ids),
        ~t.one_of(session, sal.service_id, svc_ids))).scalars())
    search_index.refresh(session, service_ids=sorted(others))


def write_capacities(session: Session, capacities: dict[str, Any], now: datetime) -> None:
    """Capacity for services that have none yet; live capacity is never overwritten."""
    if not capacities:
        return
    rows = [{"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"capacity:{sid}")), "service_id": sid,
             "maximum": c.maximum, "accepting": c.accepting, "available": c.available,
             "updated": now} for sid, c in capacities.items()]
    _upsert(session, t.service_capacity, rows, conflict="service_id", update=False)


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
