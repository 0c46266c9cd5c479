"""The directory as HSDS 3.0 ``service_full`` documents (for export and the ``/hsds/`` API).

Built for many services at once (one query per table). Confidential locations appear
without coordinates, addresses, phones or contacts (nor those of their services at
location), marked with the ``confidential-location`` term,
so re-importing an export keeps them confidential and keeps their stored coordinates.
HSDS 3.0 schedules carry a UTC offset, not a time-zone name: the offset written is the one
in force at export time.
"""
from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import tables as t
from ..queries import load_services
from . import taxonomy

LANGUAGE_NAMES = {"en": "English", "es": "Spanish", "fr": "French", "zh": "Chinese",
                  "vi": "Vietnamese", "ko": "Korean", "ru": "Russian", "ar": "Arabic",
                  "so": "Somali", "tl": "Tagalog", "am": "Amharic", "uk": "Ukrainian"}
WEEK = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")


def _sub_id(owner: str, what: str) -> str:
    return str(uuid.uuid5(uuid.UUID(owner) if _is_uuid(owner) else uuid.NAMESPACE_URL,
                          f"{owner}:{what}"))


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def prune(value: Any) -> Any:
    """Drop ``None`` values (HSDS types do not allow null) recursively."""
    if isinstance(value, dict):
        return {k: prune(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [prune(v) for v in value]
    return value


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _offset_hours(zone: str, now: datetime) -> float | int:
    offset = now.astimezone(ZoneInfo(zone)).utcoffset()
    value = offset.total_seconds() / 3600 if offset else 0.0
    return int(value) if value.is_integer() else value


def schedules(sid: str, schedule: Any, now: datetime) -> list[dict[str, Any]]:
    base = {"service_id": sid, "freq": "WEEKLY",
            "timezone": _offset_hours(schedule.timezone, now),
            "valid_from": schedule.valid_from and schedule.valid_from.isoformat(),
            "valid_to": schedule.valid_to and schedule.valid_to.isoformat()}
    if schedule.always_open:
        return [{"id": _sub_id(sid, "schedule:24/7"), **base, "byday": ",".join(WEEK),
                 "opens_at": "00:00", "closes_at": "23:59",
                 "description": "Open 24 hours, 7 days a week"}]
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for h in schedule.hours:
        groups[(h.opens_at, h.closes_at)].append(h.byday)
    return [{"id": _sub_id(sid, f"schedule:{o}-{c}"), **base, "byday": ",".join(days),
             "opens_at": o, "closes_at": "23:59" if c == "24:00" else c}
            for (o, c), days in sorted(groups.items())]


def _area(sid: str, area: Any) -> list[dict[str, Any]]:
    if area.radius_km is not None:
        extent, name = f"radius_km={area.radius_km:g}", f"Within {area.radius_km:g} km"
    else:
        extent, name = f"geohashes={','.join(area.geohashes)}", "Listed geohash cells"
    return [{"id": _sub_id(sid, "area"), "service_id": sid, "name": name, "extent": extent,
             "extent_type": "text"}]


def _rows_by(session: Session, table: Any, column: Any, ids: list[str]
             ) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in session.execute(select(table).where(column.in_(ids)).order_by(table.c.id)):
        out[getattr(r, column.key)].append(dict(r._mapping))
    return out


def _attribute(row: dict[str, Any], term: dict[str, Any]) -> dict[str, Any]:
    return {**{k: row.get(k) for k in ("id", "link_id", "link_type", "link_entity",
                                       "taxonomy_term_id", "value", "label")},
            "taxonomy_term": term}


def service_documents(session: Session, ids: list[str], now: datetime | None = None
                      ) -> list[dict[str, Any]]:
    """``service_full`` documents of ``ids`` (in that order), confidential sites hidden."""
    now = now or datetime.now(UTC)
    loaded = load_services(session, ids)
    svc_rows = {r.id: r for r in session.execute(select(t.service).where(t.service.c.id.in_(ids)))}
    org_ids = list({one.org.id for one in loaded.values()})
    orgs = {r.id: r for r in session.execute(select(t.organization)
                                             .where(t.organization.c.id.in_(org_ids)))}
    loc_ids = list({loc.id for one in loaded.values() for loc in one.locations})
    locs = {r.id: r for r in session.execute(select(t.location).where(t.location.c.id.in_(loc_ids)))}
    sals = {(r.service_id, r.location_id): r.id for r in session.execute(
        select(t.service_at_location).where(t.service_at_location.c.service_id.in_(ids)))}
    attrs = _rows_by(session, t.attribute, t.attribute.c.link_id, ids + loc_ids)
    term_ids = list({a["taxonomy_term_id"] for rows in attrs.values() for a in rows})
    terms = {**taxonomy.OWN_TERMS, **{r.id: dict(r._mapping) for r in session.execute(
        select(t.taxonomy_term).where(t.taxonomy_term.c.id.in_(term_ids)))}}
    addresses = _rows_by(session, t.address, t.address.c.location_id, loc_ids)
    phones = {"service": _rows_by(session, t.phone, t.phone.c.service_id, ids),
              "location": _rows_by(session, t.phone, t.phone.c.location_id, loc_ids),
              "organization": _rows_by(session, t.phone, t.phone.c.organization_id, org_ids)}
    sal_ids = list(sals.values())
    c = t.contact.c
    contacts = contacts_by_owner(session, (
        c.service_id.in_(ids) | c.location_id.in_(loc_ids) | c.service_at_location_id.in_(sal_ids)
        | c.organization_id.in_(org_ids)))
    ctx = {"attrs": attrs, "terms": terms, "addresses": addresses, "phones": phones,
           "contacts": contacts,
           "locs": locs, "orgs": orgs, "sals": sals, "now": now}
    return [prune(_document(loaded[i], svc_rows[i], ctx)) for i in ids if i in loaded]


CONTACT_OWNERS = ("service_at_location_id", "location_id", "service_id", "organization_id")


def contacts_by_owner(session: Session, where: Any
                      ) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """HSDS contacts (with their phones) by their most specific owner, (owner column, id):
    a contact is listed once, under its service at location, else its location, else its
    service, else its organization, with every reference it has."""
    rows = [dict(r._mapping) for r in session.execute(
        select(t.contact).where(where).order_by(t.contact.c.id))]
    phones = _rows_by(session, t.phone, t.phone.c.contact_id, [r["id"] for r in rows])
    out: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        owner = next(k for k in CONTACT_OWNERS if row[k])
        out[(owner, row[owner])].append(row | {"phones": _phones(phones[row["id"]], "contact")})
    return out


def _phones(rows: list[dict[str, Any]], only_owner: str) -> list[dict[str, Any]]:
    keep = ("id", "number", "type", "description")
    return [{k: r[k] for k in keep} | {"extension": _number(r["extension"])} for r in rows
            if only_owner != "organization" or (not r["service_id"] and not r["location_id"])]


def _number(text: str | None) -> int | float | None:
    """HSDS phone extensions are numbers; the registry keeps the text it was given."""
    if text is None:
        return None
    value = float(text)
    return int(value) if value.is_integer() else value


def organization_document(org: Any, phones: list[dict[str, Any]],
                          contacts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": org.id, "name": org.name, "description": org.description or "",
            "alternate_name": org.alternate_name, "email": org.email,
            "website": org.website, "phones": _phones(phones, "organization"),
            "contacts": contacts}


def _location(loc: Any, ctx: dict[str, Any]) -> dict[str, Any]:
    terms = ctx["terms"]
    stored = [_attribute(a, terms[a["taxonomy_term_id"]]) for a in ctx["attrs"][loc.id]]
    doc: dict[str, Any] = {"id": loc.id, "location_type": loc.location_type,
                           "organization_id": loc.organization_id, "name": loc.name,
                           "description": loc.description, "attributes": stored}
    if not loc.confidential:
        doc.update(latitude=loc.latitude, longitude=loc.longitude,
                   addresses=[{k: v for k, v in a.items() if k != "location_id"} | {
                       "location_id": loc.id} for a in ctx["addresses"][loc.id]],
                   phones=_phones(ctx["phones"]["location"][loc.id], "location"),
                   contacts=ctx["contacts"][("location_id", loc.id)])
    elif not any(taxonomy.is_confidential_marker(a["taxonomy_term"]) for a in stored):
        marker = taxonomy.CONFIDENTIAL_TERM
        stored.append({"id": _sub_id(loc.id, "confidential"), "link_id": loc.id,
                       "link_entity": "location", "taxonomy_term_id": marker["id"],
                       "taxonomy_term": marker})
    return doc


def _document(one: Any, row: Any, ctx: dict[str, Any]) -> dict[str, Any]:
    sid, svc, terms = one.svc.id, one.svc, ctx["terms"]
    attrs = [_attribute(a, terms[a["taxonomy_term_id"]]) for a in ctx["attrs"][sid]]
    covered = set(taxonomy.categories_of([a["taxonomy_term"] for a in attrs])) if attrs else set()
    for need in sorted(set(svc.categories) - covered):
        term = taxonomy.need_term(need)
        attrs.append({"id": _sub_id(sid, f"need:{need}"), "link_id": sid,
                      "link_entity": "service", "taxonomy_term_id": term["id"],
                      "taxonomy_term": term})
    org = ctx["orgs"][one.org.id]
    return {
        "id": sid, "organization_id": one.org.id, "name": svc.name,
        "alternate_name": row.alternate_name, "description": row.description, "url": row.url,
        "email": row.email, "status": svc.status, "minimum_age": svc.minimum_age,
        "maximum_age": svc.maximum_age,
        "interpretation_services": "Interpretation available"
        if svc.interpretation_available else None,
        "assured_date": svc.last_confirmed and svc.last_confirmed.date().isoformat(),
        "last_modified": _time(svc.last_modified),
        "organization": organization_document(org, ctx["phones"]["organization"][org.id],
                                              ctx["contacts"][("organization_id", org.id)]),
        "phones": _phones(ctx["phones"]["service"][sid], "service"),
        "contacts": ctx["contacts"][("service_id", sid)],
        "schedules": schedules(sid, svc.schedule, ctx["now"]),
        "languages": [{"id": _sub_id(sid, f"language:{code}"), "service_id": sid,
                       "code": code, "name": LANGUAGE_NAMES.get(code.split("-")[0], code)}
                      for code in svc.languages],
        "service_areas": _area(sid, svc.service_area), "attributes": attrs,
        "service_at_locations": [_sal(ctx["sals"][(sid, loc.id)], sid, ctx["locs"][loc.id], ctx)
                                 for loc in one.locations],
    }


def _sal(sal_id: str, sid: str, loc: Any, ctx: dict[str, Any]) -> dict[str, Any]:
    """A service at location; the contacts of one at a confidential site are hidden with
    the site's other details."""
    return {"id": sal_id, "service_id": sid, "location_id": loc.id,
            "contacts": [] if loc.confidential else ctx["contacts"][("service_at_location_id",
                                                                     sal_id)],
            "location": _location(loc, ctx)}
