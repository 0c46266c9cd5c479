"""Validation against the vendored HSDS 3.0 compiled schemas (``schema/``, CC BY-SA 4.0,
Open Referral: see ``schema/LICENSE``).

The files are copies of ``schema/compiled/`` of the HSDS 3.0 specification, so the service
runs without the specification checkout. ``organization_full`` is validated with the
organization definition of ``service_with_definitions.json`` plus its ``services`` array
of full services: the same shape as the 3.4 MB ``compiled/organization.json``, which is
therefore not vendored.

JSON Schema allows unknown properties in HSDS; the registry does not (an unknown field is
usually a typo or a different version), so ``problems`` reports them too. Messages name the
field path and the broken rule, never the offending value (it could be contact data).
"""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

SCHEMA_DIR = Path(__file__).parent / "schema"


def load(name: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))  # type: ignore[no-any-return]


@cache
def service_schema() -> dict[str, Any]:
    return load("service_with_definitions.json")


@cache
def organization_schema() -> dict[str, Any]:
    """organization_full: the organization definition with an array of full services."""
    service = service_schema()
    defs = service["definitions"]
    nested_service = {k: v for k, v in service.items() if k != "definitions"}
    org = dict(defs["organization"])
    org["properties"] = {**org["properties"], "services": {"type": "array",
                                                           "items": nested_service}}
    return {**org, "definitions": defs}


@cache
def table_schemas() -> dict[str, dict[str, Any]]:
    """Datapackage table name -> the schema of one row (``tabular.json``)."""
    tabular = load("tabular.json")
    return {name: _flat(prop["items"]) for name, prop in tabular["properties"].items()}


def _flat(schema: dict[str, Any]) -> dict[str, Any]:
    """A CSV row has only scalar columns: drop the nested arrays/objects (``$ref``s to the
    non-compiled schema files) that ``tabular.json`` still lists."""
    scalar = {k: v for k, v in schema["properties"].items()
              if "$ref" not in v and v.get("type") not in ("array", "object")}
    return {**schema, "properties": scalar}


@cache
def _fast(kind: str, table: str = "") -> Any:
    """A jsonschema-rs validator (compiled, ~100x faster) for the common case: a valid
    record. Only invalid ones go through the ``jsonschema`` validator, for the messages."""
    schema = table_schemas()[table] if table else {
        "service": service_schema, "organization": organization_schema}[kind]()
    return jsonschema_rs.validator_for(schema, validate_formats=True)


@cache
def _validator(kind: str) -> Draft202012Validator:
    schema = {"service": service_schema, "organization": organization_schema}[kind]()
    return Draft202012Validator(schema, format_checker=FormatChecker())


@cache
def _row_validator(table: str) -> Draft202012Validator:
    return Draft202012Validator(table_schemas()[table], format_checker=FormatChecker())


def _describe(error: ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path) or "(record)"
    rule, expected = error.validator, error.validator_value
    if rule == "required":
        return f"{path}: {error.message.split(' is a required')[0].strip(chr(39))} is required"
    if rule == "type":
        return f"{path}: must be of type {expected}"
    if rule == "format":
        return f"{path}: not a valid {expected}"
    if rule == "enum":
        return f"{path}: must be one of {', '.join(map(str, expected))}"
    return f"{path}: breaks the {rule} rule"


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/definitions/"):
        return defs[ref.rsplit("/", 1)[1]]  # type: ignore[no-any-return]
    return schema


def unknown_fields(record: Any, schema: dict[str, Any], defs: dict[str, Any],
                   path: str = "") -> list[str]:
    """Dotted paths of properties ``schema`` does not define, recursively."""
    schema = _resolve(schema, defs)
    if isinstance(record, list):
        items = _resolve(schema.get("items", {}), defs)
        return [p for i, item in enumerate(record)
                for p in unknown_fields(item, items, defs, f"{path}{i}.")]
    if not isinstance(record, dict) or "properties" not in schema:
        return []
    found = []
    for key, value in record.items():
        if key not in schema["properties"]:
            found.append(f"{path}{key}: unknown field")
        else:
            found.extend(unknown_fields(value, schema["properties"][key], defs, f"{path}{key}."))
    return found


def problems(record: Any, kind: str) -> list[str]:
    """Every schema problem of one HSDS ``service`` or ``organization`` (full) record."""
    if not isinstance(record, dict):
        return ["(record): must be an object"]
    schema = {"service": service_schema, "organization": organization_schema}[kind]()
    found = [] if _fast(kind).is_valid(record) else sorted(
        {_describe(e) for e in _validator(kind).iter_errors(record)})
    return found + unknown_fields(record, schema, schema["definitions"])


def row_problems(table: str, row: dict[str, Any]) -> list[str]:
    """Problems of one typed datapackage row of ``table`` (``tabular.json``)."""
    schema = table_schemas()[table]
    found = [] if _fast("row", table).is_valid(row) else sorted(
        {_describe(e) for e in _row_validator(table).iter_errors(row)})
    return found + [f"{k}: unknown column" for k in row if k not in schema["properties"]]


def rows_valid(table: str, rows: list[dict[str, Any]]) -> bool:
    """Whether ``row_problems`` finds nothing in any of these typed rows of ``table``: the
    compiled validator on each, and no column the schema does not know."""
    if not set().union(*rows) <= table_schemas()[table]["properties"].keys():
        return False
    valid = _fast("row", table).is_valid
    return all(valid(row) for row in rows)


def validate_service(record: Any) -> list[str]:
    return problems(record, "service")


def validate_organization(record: Any) -> list[str]:
    return problems(record, "organization")
