"""Build the registry rows of one HSDS ``service_full`` document (pure; see ``mapping``).

Every problem of the record is collected before anything is written, so a record is either
imported whole or reported with all its reasons.
"""
from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Any

from .. import domain
from . import taxonomy
from .mapping import (
    Bundle,
    RecordError,
    _age,
    _date,
    _languages,
    _phones,
    area_of,
    digest,
    schedule_of,
)

CONTACT_OWNERS = ("service_at_location_id", "location_id", "service_id", "organization_id")
_CONTACT_FIELDS = ("id", "name", "title", "department", "email")
_ADDRESS_FIELDS = ("id", "attention", "address_1", "address_2", "city", "region",
                   "state_province", "postal_code", "country", "address_type")


def organization_row(org: dict[str, Any]) -> dict[str, Any]:
    return {"id": org["id"], "name": org["name"], "description": org.get("description") or None,
            "alternate_name": org.get("alternate_name"), "email": org.get("email"),
            "website": org.get("website")}


def _attributes(rows: list[dict[str, Any]], link_id: str, link_entity: str,
                known_terms: dict[str, dict[str, Any]], path: str, errors: list[str]
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    attrs, terms = [], []
    for i, row in enumerate(rows):
        term = row.get("taxonomy_term") or known_terms.get(str(row.get("taxonomy_term_id")))
        if not term or not term.get("id"):
            errors.append(f"{path}.{i}.taxonomy_term_id: no such taxonomy term")
            continue
        if row.get("taxonomy_term_id") and row["taxonomy_term_id"] != term["id"]:
            errors.append(f"{path}.{i}.taxonomy_term_id: differs from taxonomy_term.id")
            continue
        terms.append(term)
        attrs.append({"id": row["id"], "link_id": link_id, "link_entity": link_entity,
                      "link_type": row.get("link_type"), "taxonomy_term_id": term["id"],
                      "value": row.get("value"), "label": row.get("label")})
    return attrs, terms


def _location(loc: dict[str, Any], org_id: str, known_terms: dict[str, dict[str, Any]],
              path: str, errors: list[str], warnings: list[str]
              ) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]:
    attrs, terms = _attributes(loc.get("attributes") or [], loc["id"], "location",
                               known_terms, f"{path}.attributes", errors)
    confidential = any(taxonomy.is_confidential_marker(t) for t in terms)
    lat, lon = loc.get("latitude"), loc.get("longitude")
    if lat is None or lon is None:
        if not confidential:
            warnings.append(f"{path}: no coordinates; the location is not used for routing")
            return None, [], []
    elif not (-90 <= lat <= 90 and -180 <= lon <= 180):
        errors.append(f"{path}: impossible coordinates (latitude -90..90, longitude "
                      "-180..180)")
        return None, [], []
    row = {"id": loc["id"], "organization_id": loc.get("organization_id") or org_id,
           "hidden": lat is None,  # exported hidden (confidential): stored details are kept
           "name": loc.get("name"), "location_type": loc.get("location_type") or "physical",
           "description": loc.get("description"), "latitude": lat, "longitude": lon,
           "confidential": confidential,
           "addresses": [{k: a.get(k) for k in _ADDRESS_FIELDS} | {"location_id": loc["id"]}
                         for a in loc.get("addresses") or []],
           "phones": _phones(loc.get("phones") or [], location_id=loc["id"])}
    return row, attrs, terms


def _sites(doc: dict[str, Any], org_id: str, known_terms: dict[str, dict[str, Any]],
           errors: list[str], warnings: list[str]) -> tuple[list[dict[str, Any]],
                                                             dict[str, str],
                                                             list[dict[str, Any]],
                                                             list[dict[str, Any]]]:
    locations, sal_ids, attrs, terms = [], {}, [], []
    for i, sal in enumerate(doc.get("service_at_locations") or []):
        path = f"service_at_locations.{i}"
        loc = sal.get("location")
        if loc is None:
            errors.append(f"{path}.location: the full location is required")
            continue
        if sal.get("location_id") and sal["location_id"] != loc.get("id"):
            errors.append(f"{path}.location_id: differs from location.id")
            continue
        row, loc_attrs, loc_terms = _location(loc, org_id, known_terms, f"{path}.location",
                                              errors, warnings)
        if row is not None and row["id"] not in sal_ids:
            locations.append(row)
            sal_ids[row["id"]] = sal["id"]
            attrs += loc_attrs
            terms += loc_terms
    return locations, sal_ids, attrs, terms


def _contacts(nests: list[tuple[str, str, str, list[dict[str, Any]]]],
              own: dict[str, set[str]], errors: list[str], warnings: list[str]
              ) -> list[dict[str, Any]]:
    """Contact rows of a record: ``nests`` are (path, owner column, owner id, contacts),
    the most specific owner first; a contact listed under several owners (HSDS examples do
    that) is kept by the most specific one. A contact's other references must name what
    the record itself carries (``own``: column -> ids); any other is dropped with a
    warning, as a location's unknown organization is."""
    out: dict[str, dict[str, Any]] = {}
    for path, column, owner_id, rows in nests:
        for i, c in enumerate(rows):
            where = f"{path}.{i}"
            if c.get(column) not in (None, owner_id):
                errors.append(f"{where}.{column}: differs from the enclosing record")
                continue
            if c["id"] in out:
                continue
            row = {k: c.get(k) for k in _CONTACT_FIELDS} | {k: None for k in CONTACT_OWNERS}
            row[column] = owner_id
            for other in CONTACT_OWNERS:
                ref = c.get(other)
                if other == column or ref is None:
                    continue
                if ref in own[other]:
                    row[other] = ref
                else:
                    warnings.append(f"{where}.{other}: not part of this record; dropped")
            row["phones"] = _phones(c.get("phones") or [], contact_id=c["id"])
            out[c["id"]] = row
    return list(out.values())


def organization_contacts(org: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The contact rows of an ``organization`` record imported on its own (no services)
    and the warnings: they belong to the organization; ``RecordError`` if one names
    another one."""
    errors: list[str] = []
    warnings: list[str] = []
    own = {"service_at_location_id": set(), "location_id": set(), "service_id": set(),
           "organization_id": {org["id"]}}
    rows = _contacts([("contacts", "organization_id", org["id"], org.get("contacts") or [])],
                     own, errors, warnings)
    if errors:
        raise RecordError(errors)
    return rows, warnings


def _record_contacts(doc: dict[str, Any], org_doc: dict[str, Any] | None, org_id: str,
                    locations: list[dict[str, Any]], sal_ids: dict[str, str],
                    errors: list[str], warnings: list[str]) -> list[dict[str, Any]]:
    kept = {loc["id"] for loc in locations}
    nests = []
    for i, sal in enumerate(doc.get("service_at_locations") or []):
        loc = sal.get("location") or {}
        if loc.get("id") in kept and sal_ids.get(loc["id"]) == sal["id"]:
            nests.append((f"service_at_locations.{i}.contacts", "service_at_location_id",
                          sal["id"], sal.get("contacts") or []))
    for i, sal in enumerate(doc.get("service_at_locations") or []):
        loc = sal.get("location") or {}
        if loc.get("id") in kept:
            nests.append((f"service_at_locations.{i}.location.contacts", "location_id",
                          loc["id"], loc.get("contacts") or []))
    nests.append(("contacts", "service_id", doc["id"], doc.get("contacts") or []))
    if org_doc:
        nests.append(("organization.contacts", "organization_id", org_id,
                      org_doc.get("contacts") or []))
    own = {"service_at_location_id": set(sal_ids.values()), "location_id": kept,
           "service_id": {doc["id"]}, "organization_id": {org_id}}
    return _contacts(nests, own, errors, warnings)


def bundle_of(doc: dict[str, Any], *, known_terms: dict[str, dict[str, Any]],
              default_radius_km: float, now: datetime, doc_digest: str | None = None
              ) -> Bundle:
    """The rows of one schema-valid service document, or ``RecordError`` with every reason.
    ``doc_digest``: ``digest(doc)`` when the caller computed it already."""
    errors: list[str] = []
    warnings: list[str] = []
    org_doc = doc.get("organization")
    org_id = doc.get("organization_id") or (org_doc or {}).get("id")
    if not org_id:
        raise RecordError(["organization_id: required"])
    if org_doc and org_doc.get("id") != org_id:
        errors.append("organization.id: differs from organization_id")
    locations, sal_ids, loc_attrs, loc_terms = _sites(doc, org_id, known_terms, errors,
                                                      warnings)
    attrs, terms = _attributes(doc.get("attributes") or [], doc["id"], "service", known_terms,
                               "attributes", errors)
    schedule = schedule_of(doc.get("schedules") or [], errors)
    low = _age(doc.get("minimum_age"), "minimum_age", errors)
    high = _age(doc.get("maximum_age"), "maximum_age", errors)
    try:
        area = area_of(doc.get("service_areas") or [], len(locations), default_radius_km,
                       warnings)
    except RecordError as exc:
        errors += exc.reasons
        area = domain.ServiceArea(radius_km=None, geohashes=("0",))
    assured = doc.get("assured_date")
    confirmed = datetime.combine(_date(assured), time(), UTC) if assured else now
    svc = domain.Service(
        id=doc["id"], organization_id=org_id, name=doc["name"], status=doc["status"],
        categories=tuple(taxonomy.categories_of(terms)), minimum_age=low, maximum_age=high,
        genders=(), populations=(), languages=tuple(_languages(doc.get("languages") or [],
                                                               warnings)),
        interpretation_available=bool(doc.get("interpretation_services")),
        service_area=area, schedule=schedule, last_modified=now, last_confirmed=confirmed)
    contacts = _record_contacts(doc, org_doc, org_id, locations, sal_ids, errors, warnings)
    rule_errors = domain.service_errors(svc, len(locations))
    errors += [f"{k}: {' '.join(v)}" for k, v in rule_errors.items()
               if not (k == "service_area" and any(e.startswith("service_areas") for e in errors))]
    if errors:
        raise RecordError(sorted(set(errors)))
    row = {"alternate_name": doc.get("alternate_name"), "url": doc.get("url"),
           "email": doc.get("email"), "description": doc.get("description")}
    phones = _phones(doc.get("phones") or [], service_id=doc["id"])
    if org_doc:
        phones += _phones(org_doc.get("phones") or [], organization_id=org_id)
    return Bundle(service_id=doc["id"], organization_id=org_id,
                  organization=organization_row(org_doc) if org_doc else None, service=svc,
                  service_row=row, locations=locations, site_ids=list(sal_ids),
                  sal_ids=sal_ids, attributes=attrs + loc_attrs, terms=terms + loc_terms,
                  phones=phones, contacts=contacts, warnings=warnings,
                  digest=doc_digest or digest(doc))
