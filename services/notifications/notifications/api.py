"""notifications HTTP API: thin; parse with marshmallow, call a handler, dump the result."""
from __future__ import annotations

from typing import Any

from flask import current_app
from flask_smorest import Blueprint
from marshmallow import RAISE

from servicekit.auth import current_principal, requires
from servicekit.db import Database
from servicekit.web import Problem

from . import handlers
from .schemas import FeedArgs, NotificationPage

blp = Blueprint("notifications", __name__, url_prefix="/v1",
                description="In-app notifications (id-only)")


def _db() -> Database:
    return current_app.extensions["db"]  # type: ignore[no-any-return]


@blp.route("/notifications", methods=["GET"])
@requires("provider", "supervisor", "officer")
@blp.arguments(FeedArgs, location="query", unknown=RAISE)  # webargs would EXCLUDE
@blp.response(200, NotificationPage)
@blp.doc(security=[{"bearerAuth": []}])
def list_notifications(args: dict[str, Any]) -> dict[str, Any]:
    """The caller's feed, newest first. Providers: their organization's; supervisors: their
    agency's; officers: none yet (see the service README)."""
    with _db().uow() as uow:
        items, total = handlers.feed_for(uow.session, current_principal(),
                                         unread_only=args["unread"], limit=args["limit"],
                                         offset=args["offset"])
    return {"items": items, "total": total, **args}


@blp.route("/notifications/<uuid:notification_id>/read", methods=["POST"])
@requires("provider", "supervisor", "officer")
@blp.response(204)
@blp.alt_response(404, description="No such notification for the caller")
@blp.doc(security=[{"bearerAuth": []}])
def mark_read(notification_id: Any) -> None:
    """Mark one of the caller's notifications read (idempotent)."""
    try:
        with _db().transaction() as session:
            handlers.mark_read(session, current_principal(), str(notification_id))
    except handlers.NotFound:
        raise Problem(404, "Not Found", "No such notification for you") from None


def register(api: Any) -> None:
    api.register_blueprint(blp)
