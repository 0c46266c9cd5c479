"""provider-registry HTTP API: thin; parse with marshmallow, call a handler, dump the result."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

from flask import Response, current_app, request
from flask_smorest import Blueprint
from marshmallow import RAISE
from sqlalchemy.orm import Session

from servicekit import idempotency
from servicekit.auth import current_principal, requires, same_org
from servicekit.db import Database
from servicekit.schemas import PageArgs
from servicekit.web import Problem

from . import domain, handlers, listing, queries, search
from .schemas import (
    CapacityIn,
    LocationFields,
    LocationIn,
    LocationOut,
    LocationPage,
    LocationQuery,
    OrganizationFields,
    OrganizationIn,
    OrganizationOut,
    OrganizationPage,
    ServiceFields,
    ServiceIn,
    ServiceOut,
    ServicePage,
    ServiceQuery,
)
from .search import SearchQuery

blp = Blueprint("directory", __name__, url_prefix="/v1",
                description="Provider directory: organizations, services, sites, capacity")
ANY_ROLE = ("officer", "provider", "supervisor", "admin")
BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]
IDEMPOTENT = {"security": BEARER, "parameters": [
    {"in": "header", "name": "Idempotency-Key", "schema": {"type": "string"}}]}


def _db() -> Database:
    return current_app.extensions["db"]  # type: ignore[no-any-return]


@contextmanager
def _problems() -> Iterator[None]:
    """Answer the handlers' domain errors as problem+json."""
    try:
        yield
    except queries.NotFound:
        raise Problem(404, "Not Found", "No such directory entry") from None
    except handlers.Conflict as exc:
        raise Problem(409, "Conflict", str(exc), errors=exc.errors) from None
    except domain.RuleViolation as exc:
        raise Problem(422, "Unprocessable Content", f"Invalid fields: {', '.join(exc.errors)}",
                      type_="/problems/validation", errors=dict(exc.errors)) from None


def _create(work: Callable[[Session], dict[str, Any]], dump: Callable[[Any], Any],
            id_field: str = "id") -> Response:
    """Run a create handler at most once per Idempotency-Key; answer 201."""
    principal = current_principal()

    def run(session: Session) -> tuple[int, dict[str, Any], str]:
        view = work(session)
        return 201, dump(view), str(view[id_field])

    with _problems():
        return idempotency.run(_db(), principal=f"{principal.role}:{principal.sub}",
                               key=idempotency.request_key(), payload=request.get_json(),
                               work=run)


# --- services -------------------------------------------------------------------------------

@blp.route("/services", methods=["GET"])
@requires(*ANY_ROLE)
@blp.arguments(ServiceQuery, location="query", unknown=RAISE)  # webargs would EXCLUDE
@blp.response(200, ServicePage)
@blp.doc(security=BEARER)
def list_services(args: dict[str, Any]) -> Response:
    """Search the directory: need, lat/lon + radius_km (nearest first, with distance_km),
    language, age, accepting, open_now (each service's own time zone), stale; a page at
    a time. Confidential sites show neither address nor coordinates."""
    org = args.get("organization_id")
    query = SearchQuery(**{**args, "organization_id": str(org) if org else None})
    now, principal, stale_days = handlers._now(), current_principal(), _stale_days()
    with _db().uow() as uow:
        rows, total = search.search_page(uow.session, query, now=now,
                                         stale_after_days=stale_days)
    origin = (query.lat, query.lon) if query.lat is not None and query.lon is not None else None
    items = listing.items(rows, may_reveal=lambda org_id: _may_reveal(principal, org_id),
                          now=now, stale_after_days=stale_days, origin=origin)
    # already in ServicePage's JSON form (listing.item): answered without a schema dump
    page = {"items": items, "total": total, "limit": args["limit"], "offset": args["offset"]}
    return cast(Response, current_app.json.response(page))  # flask-smorest passes it on


def _stale_days() -> int:
    return int(current_app.extensions["registry_stale_after_days"])


def _may_reveal(principal: Any, org_id: str) -> bool:
    """Confidential sites are shown to admins and the organization's own staff only."""
    return principal.role == "admin" or (principal.role == "provider"
                                         and same_org(principal, org_id))


@blp.route("/services/<uuid:service_id>", methods=["GET"])
@requires(*ANY_ROLE)
@blp.response(200, ServiceOut)
@blp.doc(security=BEARER)
def get_service(service_id: Any) -> dict[str, Any]:
    principal = current_principal()
    with _problems(), _db().uow() as uow:
        [view] = queries.service_views(
            uow.session, [str(service_id)], may_reveal=lambda o: _may_reveal(principal, o),
            now=handlers._now(), stale_after_days=_stale_days()) or [None]
        if view is None:
            raise queries.NotFound(str(service_id))
        return view


@blp.route("/services", methods=["POST"])
@requires("admin", "provider")
@blp.arguments(ServiceIn)
@blp.response(201, ServiceOut)
@blp.doc(**IDEMPOTENT)
def create_service(body: dict[str, Any]) -> Response:
    """Create a service (admin; provider staff for their own organization) and publish it."""
    principal = current_principal()
    return _create(lambda s: handlers.create_service(s, principal, body), ServiceOut().dump,
                   "service_id")


@blp.route("/services/<uuid:service_id>", methods=["PUT"])
@requires("admin", "provider")
@blp.arguments(ServiceFields)
@blp.response(200, ServiceOut)
@blp.doc(security=BEARER)
def replace_service(body: dict[str, Any], service_id: Any) -> dict[str, Any]:
    with _problems(), _db().transaction() as session:
        return handlers.update_service(session, current_principal(), str(service_id), body)


@blp.route("/services/<uuid:service_id>", methods=["DELETE"])
@requires("admin", "provider")
@blp.response(204)
@blp.doc(security=BEARER)
def delete_service(service_id: Any) -> None:
    with _problems(), _db().transaction() as session:
        handlers.delete_service(session, current_principal(), str(service_id))


@blp.route("/services/<uuid:service_id>/capacity", methods=["PUT"])
@requires("admin", "provider")
@blp.arguments(CapacityIn)
@blp.response(200, ServiceOut)
@blp.doc(security=BEARER)
def put_capacity(capacity: domain.Capacity, service_id: Any) -> dict[str, Any]:
    """Set maximum and accepting (admin, or staff of the organization running the service)."""
    with _problems(), _db().transaction() as session:
        return handlers.set_capacity(session, current_principal(), str(service_id), capacity)


# --- organizations and locations --------------------------------------------------------------

@blp.route("/organizations", methods=["POST"])
@requires("admin", "provider")
@blp.arguments(OrganizationIn)
@blp.response(201, OrganizationOut)
@blp.doc(**IDEMPOTENT)
def create_organization(body: dict[str, Any]) -> Response:
    """Create an organization (admin; provider staff may register their own org id only)."""
    principal = current_principal()
    return _create(lambda s: handlers.create_organization(s, principal, body),
                   OrganizationOut().dump)


@blp.route("/organizations", methods=["GET"])
@requires(*ANY_ROLE)
@blp.arguments(PageArgs, location="query", unknown=RAISE)
@blp.response(200, OrganizationPage)
@blp.doc(security=BEARER)
def list_organizations(args: dict[str, Any]) -> dict[str, Any]:
    """Organizations by name, a page at a time."""
    with _db().uow() as uow:
        items, total = queries.organization_page(uow.session, limit=args["limit"],
                                                 offset=args["offset"])
    return {"items": items, "total": total, "limit": args["limit"], "offset": args["offset"]}


@blp.route("/organizations/<uuid:org_id>", methods=["GET"])
@requires(*ANY_ROLE)
@blp.response(200, OrganizationOut)
@blp.doc(security=BEARER)
def get_organization(org_id: Any) -> dict[str, Any]:
    with _problems(), _db().uow() as uow:
        return queries.organization_view(uow.session, str(org_id))


@blp.route("/organizations/<uuid:org_id>", methods=["PUT"])
@requires("admin", "provider")
@blp.arguments(OrganizationFields)
@blp.response(200, OrganizationOut)
@blp.doc(security=BEARER)
def replace_organization(body: dict[str, Any], org_id: Any) -> dict[str, Any]:
    with _problems(), _db().transaction() as session:
        return handlers.update_organization(session, current_principal(), str(org_id), body)


@blp.route("/organizations/<uuid:org_id>", methods=["DELETE"])
@requires("admin", "provider")
@blp.response(204)
@blp.alt_response(409, description="The organization still runs services (listed in "
                  "`errors.services`): delete or move them first")
@blp.doc(security=BEARER)
def delete_organization(org_id: Any) -> None:
    """Remove an organization that runs no services, with its sites (admin; provider
    staff for their own organization)."""
    with _problems(), _db().transaction() as session:
        handlers.delete_organization(session, current_principal(), str(org_id))


@blp.route("/locations", methods=["GET"])
@requires(*ANY_ROLE)
@blp.arguments(LocationQuery, location="query", unknown=RAISE)
@blp.response(200, LocationPage)
@blp.doc(security=BEARER)
def list_locations(args: dict[str, Any]) -> dict[str, Any]:
    """Sites, optionally of one organization, a page at a time. Confidential sites show
    neither address nor coordinates except to admins and their organization's staff."""
    principal, org = current_principal(), args.get("organization_id")
    with _db().uow() as uow:
        items, total = queries.location_page(
            uow.session, may_reveal=lambda o: _may_reveal(principal, o), limit=args["limit"],
            offset=args["offset"], organization_id=str(org) if org else None)
    return {"items": items, "total": total, "limit": args["limit"], "offset": args["offset"]}


@blp.route("/locations/<uuid:location_id>", methods=["GET"])
@requires(*ANY_ROLE)
@blp.response(200, LocationOut)
@blp.doc(security=BEARER)
def get_location(location_id: Any) -> dict[str, Any]:
    """One site (a confidential one hidden as in the list)."""
    principal = current_principal()
    with _problems(), _db().uow() as uow:
        return queries.location_view(uow.session, str(location_id),
                                     may_reveal=lambda o: _may_reveal(principal, o))


@blp.route("/locations", methods=["POST"])
@requires("admin", "provider")
@blp.arguments(LocationIn)
@blp.response(201, LocationOut)
@blp.doc(**IDEMPOTENT)
def create_location(body: dict[str, Any]) -> Response:
    principal = current_principal()
    return _create(lambda s: handlers.create_location(s, principal, body), LocationOut().dump)


@blp.route("/locations/<uuid:location_id>", methods=["PUT"])
@requires("admin", "provider")
@blp.arguments(LocationFields)
@blp.response(200, LocationOut)
@blp.doc(security=BEARER)
def replace_location(body: dict[str, Any], location_id: Any) -> dict[str, Any]:
    with _problems(), _db().transaction() as session:
        return handlers.update_location(session, current_principal(), str(location_id), body)


@blp.route("/locations/<uuid:location_id>", methods=["DELETE"])
@requires("admin", "provider")
@blp.response(204)
@blp.alt_response(409, description="The site is the only one of a service whose area is a "
                  "radius around its sites (listed in `errors.services`)")
@blp.doc(security=BEARER)
def delete_location(location_id: Any) -> None:
    """Remove a site and its service-at-location links; every service offered there is
    re-published without it."""
    with _problems(), _db().transaction() as session:
        handlers.delete_location(session, current_principal(), str(location_id))


def register(api: Any) -> None:
    api.register_blueprint(blp)
