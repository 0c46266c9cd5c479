"""matching HTTP API: thin; parse with marshmallow, call a query, dump the result."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import current_app
from flask_smorest import Blueprint

from servicekit.auth import current_principal, requires
from servicekit.db import Database
from servicekit.schemas import PageArgs
from servicekit.web import Problem

from . import queries
from .schemas import DecisionList, LoadPage, SimulateIn, SimulationOut

blp = Blueprint("matching", __name__, url_prefix="/v1", description="Routing decisions")


def _db() -> Database:
    return current_app.extensions["db"]  # type: ignore[no-any-return]


@blp.route("/referrals/<uuid:referral_id>/decisions", methods=["GET"])
@requires("supervisor", "admin")
@blp.response(200, DecisionList)
@blp.doc(security=[{"bearerAuth": []}])
def list_decisions(referral_id: Any) -> dict[str, Any]:
    """Every routing decision for a referral with its reasons (supervisors: own agency)."""
    with _db().uow() as uow:
        try:
            items = queries.decisions_for(uow.session, current_principal(), str(referral_id))
        except queries.NotFound:
            raise Problem(404, "Not Found", "No routing decisions visible to you") from None
    return {"referral_id": str(referral_id), "items": items}


@blp.route("/load", methods=["GET"])
@requires("supervisor", "admin")
@blp.arguments(PageArgs, location="query")
@blp.response(200, LoadPage)
@blp.doc(security=[{"bearerAuth": []}])
def list_load(args: dict[str, Any]) -> dict[str, Any]:
    """Load (open offers + active cases) against capacity per service."""
    with _db().uow() as uow:
        items, total = queries.load_report(uow.session, limit=args["limit"],
                                           offset=args["offset"])
    return {"items": items, "total": total, **args}


@blp.route("/simulate", methods=["POST"])
@requires("supervisor", "admin")
@blp.arguments(SimulateIn)
@blp.response(200, SimulationOut)
@blp.doc(security=[{"bearerAuth": []}])
def simulate(body: dict[str, Any]) -> dict[str, Any]:
    """Dry-run a referral profile: ranked candidates with scores and per-constraint
    eliminations. Reserves nothing and writes nothing."""
    with _db().uow() as uow:
        policy = current_app.extensions["matching_policy"]
        return queries.simulate(uow.session, body, datetime.now(UTC),  # never committed
                                policy.weights, policy.cache)


def register(api: Any) -> None:
    api.register_blueprint(blp)
