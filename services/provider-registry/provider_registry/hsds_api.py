"""HTTP: HSDS import/export (``/v1``, admin) and the HSDS 3.0 read API (``/hsds``).

The read API follows the vendored ``hsds/schema/openapi.json``: its paths, query parameters
and ``Page`` envelope. It needs a token of any role (the directory is shared with partners,
not published anonymously). Confidential locations show neither coordinates nor address.
``/service_at_locations/{id}`` answers with the service document (the specification's
schema for it is ``service.json``), narrowed to that one service-at-location.
"""
from __future__ import annotations

import json
import zipfile
from typing import Any

from flask import Response, current_app, request, url_for
from flask_smorest import Blueprint
from marshmallow import RAISE, fields, validate

from servicekit.auth import requires
from servicekit.db import Database
from servicekit.schemas import Strict
from servicekit.web import Problem

from .hsds import exporter, importer, read, sources, tabular

transfer = Blueprint("hsds_transfer", __name__, url_prefix="/v1",
                     description="HSDS 3.0 import and export (admin)")
hsds = Blueprint("hsds", __name__, url_prefix="/hsds",
                 description="HSDS 3.0 read API (Open Referral)")
IMPORT_ENDPOINT = "hsds_transfer.import_hsds"
ANY_ROLE = ("officer", "provider", "supervisor", "admin")
BEARER = [{"bearerAuth": []}]
HSDS_PROFILE = "https://docs.openreferral.org/en/v3.0/"


def _db() -> Database:
    return current_app.extensions["db"]  # type: ignore[no-any-return]


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, default=str), status=status, mimetype="application/json")


@transfer.route("/import/hsds", methods=["POST"])
@requires("admin")
@transfer.doc(security=BEARER, description="Body: HSDS 3.0 JSON (application/json) or a "
              "tabular datapackage zip (application/zip). Answers the per-record report.")
def import_hsds() -> Response:
    settings = current_app.extensions["registry_settings"]
    request.max_content_length = settings.int("REGISTRY_MAX_IMPORT_MB") * 1024 * 1024
    if request.mimetype not in ("application/json", "application/zip"):
        raise Problem(415, "Unsupported Media Type",
                      "Send HSDS JSON (application/json) or a datapackage zip (application/zip)")
    try:
        src = sources.read_bytes(request.get_data())
    except (ValueError, UnicodeDecodeError, zipfile.BadZipFile, KeyError, RecursionError):
        raise Problem(422, "Unprocessable Content", "body: not HSDS JSON or a datapackage zip",
                      type_="/problems/validation", errors={"body": ["Not HSDS 3.0."]}) from None
    report = importer.import_source(
        _db(), src, default_radius_km=float(settings.get("REGISTRY_DEFAULT_RADIUS_KM")))
    return _json(report.as_dict())


class ExportArgs(Strict):
    format = fields.String(load_default="json", validate=validate.OneOf(("json", "datapackage")))


@transfer.route("/export/hsds", methods=["GET"])
@requires("admin")
@transfer.arguments(ExportArgs, location="query", unknown=RAISE)
@transfer.doc(security=BEARER)
def export_hsds(args: dict[str, Any]) -> Response:
    """The whole directory: a JSON list of ``service_full`` or a datapackage zip."""
    with _db().uow() as uow:
        docs = exporter.service_documents(uow.session, read.all_service_ids(uow.session))
        taxonomies = read.stored_taxonomies(uow.session)
    if args["format"] == "json":
        return _json(docs)
    body = tabular.zip_bytes(tabular.csv_files(tabular.tables_of(docs), taxonomies))
    return Response(body, mimetype="application/zip", headers={
        "Content-Disposition": "attachment; filename=hsds-datapackage.zip"})


# --- HSDS read API ---------------------------------------------------------------------------

class PageArgs(Strict):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=10**7))
    per_page = fields.Integer(load_default=50, validate=validate.Range(1, 500))
    search = fields.String(validate=validate.Length(max=200))
    format = fields.String(validate=validate.OneOf(("json",)))


class ServiceArgs(PageArgs):
    taxonomy_term_id = fields.String(validate=validate.Length(max=100))
    taxonomy_id = fields.String(validate=validate.Length(max=100))
    organization_id = fields.String(validate=validate.Length(max=100))
    modified_after = fields.AwareDateTime()
    minimal = fields.Boolean()
    full = fields.Boolean()


class SalArgs(ServiceArgs):
    postcode = fields.String(validate=validate.Length(max=20))
    proximity = fields.Float()


class OrganizationArgs(PageArgs):
    full_service = fields.Boolean()
    full = fields.Boolean()


class TermArgs(PageArgs):
    taxonomy_id = fields.String(validate=validate.Length(max=100))
    top_only = fields.Boolean()
    parent_id = fields.String(validate=validate.Length(max=100))


class FullServiceArg(Strict):
    full_service = fields.Boolean()


def _filters(args: dict[str, Any]) -> dict[str, Any]:
    keys = ("search", "taxonomy_term_id", "taxonomy_id", "organization_id", "modified_after")
    return {k: args[k] for k in keys if k in args}


@hsds.route("/", methods=["GET"])
@requires(*ANY_ROLE)
def api_root() -> Response:
    return _json({"version": "3.0", "profile": HSDS_PROFILE,
                  "openapi_url": url_for("api-docs.openapi_json", _external=True)})


@hsds.route("/services", methods=["GET"])
@requires(*ANY_ROLE)
@hsds.arguments(ServiceArgs, location="query", unknown=RAISE)
def list_services(args: dict[str, Any]) -> Response:
    with _db().uow() as uow:
        ids, total = read.service_ids(uow.session, page=args["page"],
                                      per_page=args["per_page"], **_filters(args))
        docs = exporter.service_documents(uow.session, ids)
    if args.get("minimal"):
        docs = [{"id": d["id"], "last_modified": d["last_modified"], "name": d["name"],
                 "status": d["status"]} for d in docs]
    elif not args.get("full"):
        docs = [read.service_list_item(d) for d in docs]
    return _json(read.envelope(docs, total, args["page"], args["per_page"]))


def _one_service(service_id: str) -> dict[str, Any]:
    with _db().uow() as uow:
        docs = exporter.service_documents(uow.session, [service_id])
    if not docs:
        raise Problem(404, "Not Found", "No such service")
    return docs[0]


@hsds.route("/services/<service_id>", methods=["GET"])
@requires(*ANY_ROLE)
def get_service(service_id: str) -> Response:
    return _json(_one_service(service_id))


@hsds.route("/organizations", methods=["GET"])
@requires(*ANY_ROLE)
@hsds.arguments(OrganizationArgs, location="query", unknown=RAISE)
def list_organizations(args: dict[str, Any]) -> Response:
    with _db().uow() as uow:
        ids, total = read.organization_ids(uow.session, page=args["page"],
                                           per_page=args["per_page"], search=args.get("search"))
        orgs = read.organizations(uow.session, ids)
    if not args.get("full"):
        orgs = [{k: v for k, v in o.items() if k not in ("phones", "contacts")} for o in orgs]
    return _json(read.envelope(orgs, total, args["page"], args["per_page"]))


@hsds.route("/organizations/<org_id>", methods=["GET"])
@requires(*ANY_ROLE)
@hsds.arguments(FullServiceArg, location="query", unknown=RAISE)
def get_organization(args: dict[str, Any], org_id: str) -> Response:
    with _db().uow() as uow:
        found = read.organizations(uow.session, [org_id])
        if not found:
            raise Problem(404, "Not Found", "No such organization")
        docs = exporter.service_documents(uow.session, read.services_of(uow.session, org_id))
    services = docs if args.get("full_service") else [
        {k: v for k, v in read.service_list_item(d).items() if k != "organization"}
        for d in docs]
    return _json({**found[0], "services": [
        {k: v for k, v in s.items() if k != "organization"} for s in services]})


@hsds.route("/taxonomies", methods=["GET"])
@requires(*ANY_ROLE)
@hsds.arguments(PageArgs, location="query", unknown=RAISE)
def list_taxonomies(args: dict[str, Any]) -> Response:
    with _db().uow() as uow:
        rows, total = read.taxonomies(uow.session, page=args["page"],
                                      per_page=args["per_page"], search=args.get("search"))
    return _json(read.envelope(rows, total, args["page"], args["per_page"]))


@hsds.route("/taxonomies/<taxonomy_id>", methods=["GET"])
@requires(*ANY_ROLE)
def get_taxonomy(taxonomy_id: str) -> Response:
    with _db().uow() as uow:
        rows, _ = read.taxonomies(uow.session, page=1, per_page=1, only=taxonomy_id)
    if not rows:
        raise Problem(404, "Not Found", "No such taxonomy")
    return _json(rows[0])


@hsds.route("/taxonomy_terms", methods=["GET"])
@requires(*ANY_ROLE)
@hsds.arguments(TermArgs, location="query", unknown=RAISE)
def list_terms(args: dict[str, Any]) -> Response:
    keys = ("search", "taxonomy_id", "parent_id", "top_only")
    with _db().uow() as uow:
        rows, total = read.terms(uow.session, page=args["page"], per_page=args["per_page"],
                                 **{k: args[k] for k in keys if k in args})
    return _json(read.envelope(rows, total, args["page"], args["per_page"]))


@hsds.route("/taxonomy_terms/<term_id>", methods=["GET"])
@requires(*ANY_ROLE)
def get_term(term_id: str) -> Response:
    with _db().uow() as uow:
        rows, _ = read.terms(uow.session, page=1, per_page=1, only=term_id)
    if not rows:
        raise Problem(404, "Not Found", "No such taxonomy term")
    return _json(rows[0])


@hsds.route("/service_at_locations", methods=["GET"])
@requires(*ANY_ROLE)
@hsds.arguments(SalArgs, location="query", unknown=RAISE)
def list_service_at_locations(args: dict[str, Any]) -> Response:
    with _db().uow() as uow:
        pairs, total = read.sal_ids(uow.session, page=args["page"],
                                    per_page=args["per_page"], **_filters(args))
        docs = {d["id"]: d for d in exporter.service_documents(
            uow.session, list(dict.fromkeys(sid for _, sid in pairs)))}
    items = []
    for sal_id, sid in pairs:
        doc = docs[sid]
        [sal] = [s for s in doc["service_at_locations"] if s["id"] == sal_id]
        items.append({**{k: v for k, v in sal.items()},
                      "service": read.service_list_item(doc)})
    return _json(read.envelope(items, total, args["page"], args["per_page"]))


@hsds.route("/service_at_locations/<sal_id>", methods=["GET"])
@requires(*ANY_ROLE)
def get_service_at_location(sal_id: str) -> Response:
    with _db().uow() as uow:
        service_id = read.service_of_sal(uow.session, sal_id)
    if service_id is None:
        raise Problem(404, "Not Found", "No such service at location")
    doc = _one_service(service_id)
    doc["service_at_locations"] = [s for s in doc["service_at_locations"] if s["id"] == sal_id]
    return _json(doc)


def register(api: Any) -> None:
    api.register_blueprint(transfer)
    api.register_blueprint(hsds)
