"""HSDS 3.0 tabular datapackage export: ``service_full`` documents flattened into the CSV
tables of ``tabular.json`` (column order as the schema lists them) plus ``datapackage.json``.
"""
from __future__ import annotations

import csv
import io
import json
import zipfile
from typing import Any

from . import validation

NESTED = ("organization", "phones", "contacts", "schedules", "languages", "service_areas", "attributes",
          "service_at_locations", "location", "addresses", "taxonomy_term")


def _flat(doc: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in NESTED} | extra


def tables_of(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Table name -> rows (unique by id) of the documents."""
    out: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in validation.table_schemas()}

    def put(table: str, row: dict[str, Any]) -> None:
        out[table].setdefault(row["id"], row)

    for doc in docs:
        org = doc["organization"]
        put("organization", _flat(org))
        for p in org.get("phones", []):
            put("phone", _flat(p, organization_id=org["id"]))
        _contacts(org.get("contacts", []), put)
        put("service", _flat(doc))
        for p in doc.get("phones", []):
            put("phone", _flat(p, service_id=doc["id"]))
        _contacts(doc.get("contacts", []), put)
        for table, key in (("schedule", "schedules"), ("language", "languages"),
                           ("service_area", "service_areas")):
            for row in doc.get(key, []):
                put(table, _flat(row, service_id=doc["id"]))
        _attributes(doc.get("attributes", []), put)
        for sal in doc.get("service_at_locations", []):
            put("service_at_location", _flat(sal))
            _contacts(sal.get("contacts", []), put)
            loc = sal["location"]
            put("location", _flat(loc))
            _contacts(loc.get("contacts", []), put)
            for a in loc.get("addresses", []):
                put("address", _flat(a, location_id=loc["id"]))
            for p in loc.get("phones", []):
                put("phone", _flat(p, location_id=loc["id"]))
            _attributes(loc.get("attributes", []), put)
    return {name: list(rows.values()) for name, rows in out.items() if rows}


def _contacts(contacts: list[dict[str, Any]], put: Any) -> None:
    for c in contacts:
        put("contact", _flat(c))
        for p in c.get("phones", []):
            put("phone", _flat(p, contact_id=c["id"]))


def _attributes(attrs: list[dict[str, Any]], put: Any) -> None:
    for a in attrs:
        put("attribute", _flat(a))
        term = a.get("taxonomy_term")
        if term:
            put("taxonomy_term", _flat(term))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def csv_files(tables: dict[str, list[dict[str, Any]]],
              taxonomies: list[dict[str, Any]]) -> dict[str, str]:
    """File name -> CSV text, plus ``datapackage.json``."""
    schemas = validation.table_schemas()
    if taxonomies:
        tables = {**tables, "taxonomy": taxonomies}
    files, resources = {}, []
    for name, rows in tables.items():
        schema = schemas[name]
        columns = list(schema["properties"])
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])
        files[schema["path"]] = buf.getvalue()
        resources.append({"name": name, "path": schema["path"],
                          "profile": "tabular-data-resource", "format": "csv",
                          "mediatype": "text/csv",
                          "schema": {"fields": [{"name": c, "type": _frictionless(
                              schema["properties"][c])} for c in columns]}})
    files["datapackage.json"] = json.dumps({"name": "provider-registry-hsds-export",
                                            "profile": "tabular-data-package",
                                            "resources": resources}, indent=2)
    return files


def _frictionless(prop: dict[str, Any]) -> str:
    return str(prop.get("datapackage_type") or prop.get("type") or "string")


def zip_bytes(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in sorted(files.items()):
            zf.writestr(name, text)
    return buf.getvalue()
