"""Read HSDS 3.0 input into service documents: JSON (one object, a list, or an HSDS API
page ``{"contents": [...]}``; ``service_full`` and ``organization_full`` shapes, and
taxonomy terms) and tabular datapackages (a CSV folder or a zip of one).

Schema problems are found here, record by record; a datapackage's rows are validated
against ``tabular.json`` and joined into ``service_full`` documents, and a service one of
whose rows (or its organization's or a location's) is invalid is rejected with the reason.
"""
from __future__ import annotations

import csv
import gc
import io
import json
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import validation

TERM_ONLY = {"code", "parent_id", "taxonomy", "taxonomy_id", "term_uri", "language"}


@dataclass
class Source:
    services: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (label, doc)
    organizations: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    terms: dict[str, dict[str, Any]] = field(default_factory=dict)
    taxonomies: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, label: str, reasons: list[str]) -> None:
        self.rejected.append({"record": label, "status": "rejected", "errors": reasons})


def _label(kind: str, record: Any, index: int) -> str:
    rid = record.get("id") if isinstance(record, dict) else None
    return f"{kind} {rid}" if isinstance(rid, str) and len(rid) <= 64 else f"{kind} #{index}"


def from_json(data: Any) -> Source:
    """Classify and validate each top-level record of an HSDS JSON document."""
    src = Source()
    items = data.get("contents") if isinstance(data, dict) and "contents" in data else data
    for i, item in enumerate(items if isinstance(items, list) else [items]):
        if not isinstance(item, dict):
            src.reject(f"record #{i}", ["(record): must be an object"])
        elif "status" in item or "organization_id" in item:
            _add_service(src, item, _label("service", item, i))
        elif TERM_ONLY & set(item):
            _add_term(src, item, _label("taxonomy_term", item, i))
        else:
            _add_organization(src, item, _label("organization", item, i))
    return src


def _add_service(src: Source, item: dict[str, Any], label: str) -> None:
    if problems := validation.validate_service(item):
        src.reject(label, problems)
    else:
        src.services.append((label, item))


def _add_term(src: Source, item: dict[str, Any], label: str) -> None:
    term = {k: v for k, v in item.items() if k != "taxonomy_detail"}  # API form nests it
    detail = item.get("taxonomy_detail")
    problems = validation.row_problems("taxonomy_term", term)
    if isinstance(detail, dict):
        problems += validation.row_problems("taxonomy", detail)
    if problems:
        src.reject(label, problems)
        return
    src.terms[term["id"]] = term
    if isinstance(detail, dict):
        src.taxonomies[detail["id"]] = detail


def _add_organization(src: Source, item: dict[str, Any], label: str) -> None:
    if problems := validation.validate_organization(item):
        src.reject(label, problems)
        return
    org = {k: v for k, v in item.items() if k != "services"}
    src.organizations.append((label, org))
    for j, svc in enumerate(item.get("services") or []):
        doc = {**svc, "organization_id": svc.get("organization_id") or item["id"],
               "organization": svc.get("organization") or org}
        src.services.append((_label("service", svc, j), doc))


# --- tabular datapackage ------------------------------------------------------------------

def _coerce(value: str, prop: dict[str, Any]) -> Any:
    kind = prop.get("type")
    if kind == "number":
        number = float(value)
        return int(number) if number.is_integer() and "." not in value else number
    if kind == "integer":
        return int(value)
    if kind == "boolean":
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError("not a boolean")
        return value.lower() in ("true", "1")
    return value


def _dict_rows(text: str) -> Iterator[dict[Any, Any]]:
    """``csv.DictReader`` (blank lines skipped, extra cells under the key None, missing
    ones None), without its per-row Python overhead."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        return
    width = len(header)
    for cells in reader:
        if not cells:
            continue
        raw: dict[Any, Any] = dict(zip(header, cells))
        if len(cells) > width:
            raw[None] = cells[width:]
        elif len(cells) < width:
            for key in header[len(cells):]:
                raw[key] = None
        yield raw


def _typed_rows(table: str, text: str) -> Iterator[tuple[dict[Any, Any], dict[str, Any],
                                                        list[str]]]:
    """Each row of a CSV table: raw, typed (empty cells left out) and its typing errors,
    in column order, then "more cells than columns" (only number, integer and boolean
    columns convert, ``_coerce``)."""
    props = validation.table_schemas()[table]["properties"]
    typed: list[str] | None = None  # the typed columns, in header order
    for raw in _dict_rows(text):
        if typed is None:
            typed = [k for k in raw if k in props and props[k].get("type") in (
                "number", "integer", "boolean")]
        row = {k: v for k, v in raw.items() if v is not None and v != "" and k is not None}
        errors: list[str] = []
        for key in typed:
            if key in row:
                try:
                    row[key] = _coerce(row[key], props[key])
                except ValueError:
                    del row[key]
                    errors.append(f"{key}: must be of type {props[key].get('type')}")
        if None in raw:
            errors.append("row: more cells than columns")
        yield raw, row, errors


def read_tables(files: dict[str, str], src: Source) -> dict[str, list[dict[str, Any]]]:
    """CSV text by file name -> valid typed rows by table; bad rows go to ``src``, in
    row order. The rows of a table are checked against its schema in one tight loop; only
    when one fails (or the table has columns the schema does not know) is each row
    described (``validation.row_problems``)."""
    tables: dict[str, list[dict[str, Any]]] = {}
    by_path = {schema["path"]: name for name, schema in validation.table_schemas().items()}
    for path, text in files.items():
        table = by_path.get(path)
        if table is None:
            continue  # not an HSDS table (e.g. a README): ignored
        rows = tables.setdefault(table, [])
        parsed = list(_typed_rows(table, text))
        clean = [row for _, row, errors in parsed if not errors]
        described = not validation.rows_valid(table, clean)
        for n, (raw, row, errors) in enumerate(parsed, start=2):
            if not errors and described:
                errors = validation.row_problems(table, row)
            if errors:
                src.reject(f"{path} line {n}", errors)
                src.rejected[-1].update(
                    row_id=raw.get("id"), table=table,
                    owners=[v for k in ("service_id", "link_id") if (v := raw.get(k))])
            else:
                rows.append(row)
    return tables


def _group(rows: list[dict[str, Any]], key: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row.get(key):
            out[row[key]].append(row)
    return out


def _bad_ids(src: Source, table: str) -> set[str]:
    return {r["row_id"] for r in src.rejected if r.get("table") == table and r.get("row_id")}


def from_tables(files: dict[str, str]) -> Source:
    """Join the tables of a datapackage into ``service_full`` documents."""
    src = Source()
    t = read_tables(files, src)
    get = lambda name: t.get(name, [])
    orgs = {o["id"]: o for o in get("organization")}
    src.taxonomies = {x["id"]: x for x in get("taxonomy")}
    src.terms = {x["id"]: x for x in get("taxonomy_term")}
    phones = get("phone")
    svc_phones = _group(phones, "service_id")
    loc_phones = _group([p for p in phones if not p.get("service_id")], "location_id")
    org_phones = _group([p for p in phones if not p.get("service_id")
                         and not p.get("location_id")], "organization_id")
    contact_phones = _group([p for p in phones if not p.get("service_id")
                             and not p.get("location_id") and not p.get("organization_id")],
                            "contact_id")
    attrs = _group(get("attribute"), "link_id")
    addresses = _group(get("address"), "location_id")
    locations = {loc["id"]: {**loc, "addresses": addresses.get(loc["id"], []),
                             "phones": loc_phones.get(loc["id"], []),
                             "attributes": _with_terms(attrs.get(loc["id"], []), src)}
                 for loc in get("location")}
    for org in orgs.values():
        org["phones"] = org_phones.get(org["id"], [])
    children = {name: _group(get(name), "service_id")
                for name in ("schedule", "language", "service_area", "service_at_location")}
    _nest_contacts(src, get("contact"), contact_phones, orgs, locations,
                   {s["id"]: s for rows in children["service_at_location"].values()
                    for s in rows}, {svc["id"] for svc in get("service")})
    svc_contacts = _group([c for c in get("contact") if c.get("_owner") == "service_id"],
                          "service_id")
    bad = {name: _bad_children(src, name) for name in
           ("schedule", "language", "service_area", "service_at_location", "phone",
            "attribute", "contact")}
    bad_orgs, bad_locs = _bad_ids(src, "organization"), _bad_ids(src, "location")
    for i, svc in enumerate(get("service")):
        label = _label("service", svc, i)
        sid = svc["id"]
        sals = children["service_at_location"].get(sid, [])
        broken = [f"{name} rows of this service are invalid" for name, ids in bad.items()
                  if sid in ids]
        broken += [f"organization {svc.get('organization_id')} is invalid"] if svc.get(
            "organization_id") in bad_orgs else []
        broken += [f"location {s['location_id']} is invalid" for s in sals
                   if s.get("location_id") in bad_locs]
        if broken:
            src.reject(label, broken)
            continue
        doc = {**svc, "schedules": children["schedule"].get(sid, []),
               "languages": children["language"].get(sid, []),
               "service_areas": children["service_area"].get(sid, []),
               "attributes": _with_terms(attrs.get(sid, []), src),
               "phones": svc_phones.get(sid, []),
               "contacts": [_without_owner(c) for c in svc_contacts.get(sid, [])],
               "service_at_locations": [{**s, **({"location": locations[s["location_id"]]}
                                                 if s.get("location_id") in locations else {})}
                                        for s in sals]}
        if svc.get("organization_id") in orgs:
            doc["organization"] = orgs[svc["organization_id"]]
        src.services.append((label, doc))
    referenced = {svc.get("organization_id") for _, svc in src.services}
    src.organizations = [(f"organization {o['id']}", o) for o in orgs.values()
                         if o["id"] not in referenced]
    return src


CONTACT_OWNERS = ("service_at_location_id", "location_id", "service_id", "organization_id")
ORPHAN_CONTACT = ("no service_at_location, location, service or organization it names is in "
                  "the datapackage")


def _nest_contacts(src: Source, contacts: list[dict[str, Any]],
                   phones: dict[str, list[dict[str, Any]]], orgs: dict[str, dict[str, Any]],
                   locations: dict[str, dict[str, Any]], sals: dict[str, dict[str, Any]],
                   services: set[str]) -> None:
    """Each contact row goes to its most specific owner in the datapackage (service at
    location, location, service, organization: where the JSON form nests it), with its
    phones; a contact none of whose owners is in the datapackage is rejected. Service
    contacts are marked (``_owner``) for the caller to nest."""
    present = {"service_at_location_id": sals, "location_id": locations,
               "service_id": services, "organization_id": orgs}
    for contact in contacts:
        contact["phones"] = phones.get(contact["id"], [])
        owner = next((k for k in CONTACT_OWNERS if contact.get(k) in present[k]), None)
        if owner is None:
            src.reject(f"contact {contact['id']}", [ORPHAN_CONTACT])
            continue
        contact["_owner"] = owner
        if owner != "service_id":
            target = {"service_at_location_id": sals, "location_id": locations,
                      "organization_id": orgs}[owner][contact[owner]]
            target.setdefault("contacts", []).append(_without_owner(contact))


def _without_owner(contact: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in contact.items() if k != "_owner"}


def _bad_children(src: Source, table: str) -> set[str]:
    """Owner ids (service or link id) of the rejected rows of a child table."""
    owners = set()
    for r in src.rejected:
        if r.get("table") == table:
            owners.update(r.get("owners", []))
    return owners


def _with_terms(rows: list[dict[str, Any]], src: Source) -> list[dict[str, Any]]:
    return [{**r, "taxonomy_term": src.terms[r["taxonomy_term_id"]]}
            if r.get("taxonomy_term_id") in src.terms else r for r in rows]


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection during bulk work (matching's index load does the
    same). Reading and importing a directory create hundreds of thousands of long-lived
    objects (documents, rows, bundles), which the collector would traverse again and again:
    about a fifth of the CPU of a 10,000-service import. Reference counting still frees
    everything that is not in a cycle; collection resumes at the end."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def read_path(path: Path) -> Source:
    """A JSON file, a datapackage folder, or a zip of one."""
    if path.is_dir():
        files = {p.name: p.read_text(encoding="utf-8-sig") for p in path.glob("*.csv")}
        with gc_paused():
            return from_tables(files)
    raw = path.read_bytes()
    return read_bytes(raw)


def read_bytes(raw: bytes) -> Source:
    with gc_paused():
        if raw[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(io.BytesIO(raw)) as zf:
                return from_tables({Path(n).name: zf.read(n).decode("utf-8-sig")
                                    for n in zf.namelist() if n.endswith(".csv")})
        return from_json(json.loads(raw.decode("utf-8-sig")))
