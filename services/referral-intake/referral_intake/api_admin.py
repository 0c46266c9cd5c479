"""Statistics and audit endpoints of referral-intake (supervisor, public, admin)."""
from __future__ import annotations

from datetime import UTC
from typing import Any

from flask import current_app
from flask_smorest import Blueprint
from marshmallow import fields

from servicekit.auth import current_principal, requires
from servicekit.db import Database
from servicekit.schemas import Strict

from . import audit, stats
from .schemas import AuditArgs

blp = Blueprint("intake-stats", __name__, url_prefix="/v1",
                description="Statistics and audit")


def _db() -> Database:
    return current_app.extensions["db"]  # type: ignore[no-any-return]


class StatsArgs(Strict):
    since = fields.AwareDateTime(default_timezone=UTC)
    until = fields.AwareDateTime(default_timezone=UTC)


@blp.route("/stats", methods=["GET"])
@requires("supervisor")
@blp.arguments(StatsArgs, location="query")
@blp.doc(security=[{"bearerAuth": []}])
def agency_stats(args: dict[str, Any]) -> dict[str, Any]:
    """Completion, time to accept and to first contact (median, p90), SLA breaches and the
    unmatched queue for the caller's agency, by need, urgency, area and week."""
    with _db().uow() as uow:
        return stats.agency_stats(uow.session, str(current_principal().agency),
                                  args.get("since"), args.get("until"))


@blp.route("/public/stats", methods=["GET"])
@blp.doc(security=[])
def public_stats() -> dict[str, Any]:
    """Aggregates only, no authentication; cells under 11 withheld (with complements)."""
    with _db().uow() as uow:
        return stats.public_table(uow.session)


@blp.route("/audit", methods=["GET"])
@requires("admin")
@blp.arguments(AuditArgs, location="query")
@blp.doc(security=[{"bearerAuth": []}])
def audit_log(args: dict[str, Any]) -> dict[str, Any]:
    """Audit entries, newest first: who read or wrote which PII fields, why, and when."""
    rid = args.get("referral_id")
    with _db().uow() as uow:
        items, total = audit.page(uow.session, limit=args["limit"], offset=args["offset"],
                                  referral_id=str(rid) if rid else None)
    return {"items": items, "total": total, "limit": args["limit"], "offset": args["offset"]}


@blp.route("/audit/verify", methods=["POST"])
@requires("admin")
@blp.doc(security=[{"bearerAuth": []}])
def audit_verify() -> dict[str, Any]:
    """Walk the hash chain; report the first modified, missing or reordered entry."""
    key = current_app.extensions["intake_ctx"].audit_key
    with _db().uow() as uow:
        return audit.verify(uow.session, key).as_dict()
