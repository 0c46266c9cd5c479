"""notifications HTTP API for every user: feed, mark read, live stream, preferences.

Thin: parse with marshmallow, call a use case in queries.py, dump the result. The admin and
organization endpoints (webhooks, delivery log) are in api_admin.py.
"""
from __future__ import annotations

from typing import Any

from flask import Response, current_app, request
from flask_smorest import Blueprint
from marshmallow import RAISE

from servicekit.auth import current_principal, requires
from servicekit.db import Database
from servicekit.web import Problem

from . import api_admin, queries
from .config import current as config
from .schemas import FeedArgs, NotificationPage, PreferencesIn, PreferencesOut
from .stream import events_for

blp = Blueprint("notifications", __name__, url_prefix="/v1",
                description="In-app notifications (id-only), live stream, preferences")
FEED_ROLES = ("provider", "supervisor", "officer")
BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]


def _db() -> Database:
    return current_app.extensions["db"]  # type: ignore[no-any-return]


def _caller() -> queries.Caller:
    return queries.Caller(current_principal(), config().pseudonym_key)


@blp.route("/notifications", methods=["GET"])
@requires(*FEED_ROLES)
@blp.arguments(FeedArgs, location="query", unknown=RAISE)  # webargs would EXCLUDE
@blp.response(200, NotificationPage)
@blp.doc(security=BEARER)
def list_notifications(args: dict[str, Any]) -> dict[str, Any]:
    """The caller's feed, newest first. Providers: their organization's; supervisors: their
    agency's; officers: their own referrals', as far as the resident's consent allows."""
    with _db().uow() as uow:
        items, total = queries.feed_for(uow.session, _caller(), unread_only=args["unread"],
                                        limit=args["limit"], offset=args["offset"])
    return {"items": items, "total": total, **args}


@blp.route("/notifications/<uuid:notification_id>/read", methods=["POST"])
@requires(*FEED_ROLES)
@blp.response(204)
@blp.alt_response(404, description="No such notification for the caller")
@blp.doc(security=BEARER)
def mark_read(notification_id: Any) -> None:
    """Mark one of the caller's notifications read (idempotent)."""
    try:
        with _db().transaction() as session:
            queries.mark_read(session, _caller(), str(notification_id))
    except queries.NotFound:
        raise Problem(404, "Not Found", "No such notification for you") from None


@blp.route("/stream", methods=["GET"])
@requires(*FEED_ROLES)
@blp.doc(security=BEARER, responses={"200": {
    "description": "Server-sent events: `event: notification` with the feed item as JSON "
                   "data, `: heartbeat` comments; resumes from `Last-Event-ID`",
    "content": {"text/event-stream": {"schema": {"type": "string"}}}}})
def stream() -> Response:
    """Live feed of the caller's new notifications (server-sent events)."""
    if request.args:
        raise Problem(422, "Unprocessable Content",
                      "Invalid or unknown fields: " + ", ".join(sorted(request.args)))
    body = events_for(_db(), _caller(), config().stream, request.headers.get("Last-Event-ID"))
    return Response(body, mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@blp.route("/preferences", methods=["GET"])
@requires(*FEED_ROLES)
@blp.response(200, PreferencesOut)
@blp.doc(security=BEARER)
def get_preferences() -> dict[str, Any]:
    """The caller's channels (default: in-app only)."""
    with _db().transaction() as session:
        return queries.get_preferences(session, _caller())


@blp.route("/preferences", methods=["PUT"])
@requires(*FEED_ROLES)
@blp.arguments(PreferencesIn)
@blp.response(200, PreferencesOut)
@blp.doc(security=BEARER)
def put_preferences(prefs: dict[str, Any]) -> dict[str, Any]:
    """Choose channels for notifications produced from now on. A provider's offers always
    reach the in-app feed, whatever is chosen here."""
    if "sms" in prefs["channels"] and not config().sms_enabled:
        raise Problem(422, "Unprocessable Content", "channels: SMS is not enabled here",
                      errors={"channels": ["SMS is not enabled here"]})
    with _db().transaction() as session:
        return queries.put_preferences(session, _caller(), prefs)


def register(api: Any) -> None:
    api.register_blueprint(blp)
    api_admin.register(api)
