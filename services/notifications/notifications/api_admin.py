"""Webhook registration (organization staff, admins) and the delivery log (admins)."""
from __future__ import annotations

from typing import Any

from flask import current_app
from flask_smorest import Blueprint
from marshmallow import RAISE

from servicekit.auth import Principal, current_principal, requires
from servicekit.db import Database
from servicekit.web import Problem

from . import queries
from .channels import check_webhook_url
from .config import current as config
from .schemas import (
    DeliveryArgs,
    DeliveryDetail,
    DeliveryPage,
    WebhookArgs,
    WebhookCreated,
    WebhookIn,
    WebhookList,
)

blp = Blueprint("notifications-admin", __name__, url_prefix="/v1",
                description="Webhooks per organization; delivery log and manual retry")
BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]


def _db() -> Database:
    return current_app.extensions["db"]  # type: ignore[no-any-return]


def _field_problem(field: str, message: str, status: int = 422) -> Problem:
    return Problem(status, "Unprocessable Content" if status == 422 else "Forbidden",
                   f"{field}: {message}", errors={field: [message]})


def _organization(principal: Principal, requested: str | None) -> str | None:
    """The organization a request acts for: a provider's own (naming another is refused);
    an admin's is the one named (None: every organization, for listing)."""
    if principal.role == "provider":
        if requested is not None and requested != principal.org:
            raise _field_problem("organization_id", "not your organization", 403)
        if not principal.org:
            raise Problem(403, "Forbidden", "Your token names no organization")
        return principal.org
    return requested


@blp.route("/webhooks", methods=["POST"])
@requires("provider", "admin")
@blp.arguments(WebhookIn)
@blp.response(201, WebhookCreated)
@blp.alt_response(200, schema=WebhookCreated, description="URL already registered: new secret")
@blp.doc(security=BEARER)
def register_webhook(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Register a webhook URL for an organization. The signing secret is in this response
    only; registering the same URL again issues a new secret for the same webhook."""
    org = _organization(current_principal(), body["organization_id"])
    if org is None:
        raise _field_problem("organization_id", "required for admins")
    problem = check_webhook_url(body["url"], allow_http=config().webhook_allow_http,
                                allow_private=config().webhook_allow_private)
    if problem:
        raise _field_problem("url", problem)
    with _db().transaction() as session:
        hook, created = queries.register_webhook(session, org, body["url"])
    return hook, 201 if created else 200


@blp.route("/webhooks", methods=["GET"])
@requires("provider", "admin")
@blp.arguments(WebhookArgs, location="query", unknown=RAISE)
@blp.response(200, WebhookList)
@blp.doc(security=BEARER)
def list_webhooks(args: dict[str, Any]) -> dict[str, Any]:
    """Webhooks of the caller's organization (admins: all, or the one named); no secrets."""
    org = _organization(current_principal(), args["organization_id"])
    with _db().transaction() as session:
        return {"items": queries.list_webhooks(session, org)}


@blp.route("/webhooks/<uuid:webhook_id>", methods=["DELETE"])
@requires("provider", "admin")
@blp.response(204)
@blp.alt_response(404, description="No such webhook for the caller")
@blp.doc(security=BEARER)
def delete_webhook(webhook_id: Any) -> None:
    """Stop delivering to a webhook (pending deliveries to it fail as removed)."""
    org = _organization(current_principal(), None)
    try:
        with _db().transaction() as session:
            queries.deactivate_webhook(session, str(webhook_id), org)
    except queries.NotFound:
        raise Problem(404, "Not Found", "No such webhook for you") from None


@blp.route("/deliveries", methods=["GET"])
@requires("admin")
@blp.arguments(DeliveryArgs, location="query", unknown=RAISE)
@blp.response(200, DeliveryPage)
@blp.doc(security=BEARER)
def list_deliveries(args: dict[str, Any]) -> dict[str, Any]:
    """The delivery log, most recently changed first; `status=failed` lists what needs an
    admin (retry it, or fix the target)."""
    with _db().transaction() as session:
        items, total = queries.list_deliveries(session, args["status"], args["limit"],
                                               args["offset"])
    return {"items": items, "total": total, **args}


@blp.route("/deliveries/<uuid:delivery_id>", methods=["GET"])
@requires("admin")
@blp.response(200, DeliveryDetail)
@blp.alt_response(404, description="No such delivery")
@blp.doc(security=BEARER)
def get_delivery(delivery_id: Any) -> dict[str, Any]:
    """One delivery with every attempt (status, error, status code, next attempt)."""
    try:
        with _db().transaction() as session:
            return queries.get_delivery(session, str(delivery_id))
    except queries.NotFound:
        raise Problem(404, "Not Found", "No such delivery") from None


@blp.route("/deliveries/<uuid:delivery_id>/retry", methods=["POST"])
@requires("admin")
@blp.response(202, DeliveryDetail)
@blp.alt_response(404, description="No such delivery")
@blp.alt_response(409, description="The delivery has not failed")
@blp.doc(security=BEARER)
def retry_delivery(delivery_id: Any) -> dict[str, Any]:
    """Send a failed delivery again now, with a fresh attempt budget."""
    try:
        with _db().transaction() as session:
            return queries.retry_delivery(session, str(delivery_id))
    except queries.NotFound:
        raise Problem(404, "Not Found", "No such delivery") from None
    except queries.Conflict:
        raise Problem(409, "Conflict", "Only failed deliveries can be retried") from None


def register(api: Any) -> None:
    api.register_blueprint(blp)
