"""referral-intake HTTP API: thin; parse with marshmallow, call a handler, dump the result."""
from __future__ import annotations

from typing import Any

from flask import Response, current_app, request
from flask_smorest import Blueprint

from servicekit import idempotency
from servicekit.auth import current_principal, requires
from servicekit.db import Database
from servicekit.schemas import PageArgs
from servicekit.web import Problem

from . import handlers
from .schemas import ReferralIn, ReferralOut, ReferralPage

blp = Blueprint("referrals", __name__, url_prefix="/v1", description="Referrals")


def _db() -> Database:
    return current_app.extensions["db"]  # type: ignore[no-any-return]


def _ctx() -> handlers.Context:
    return current_app.extensions["intake_ctx"]  # type: ignore[no-any-return]


@blp.route("/referrals", methods=["POST"])
@requires("officer")
@blp.arguments(ReferralIn)
@blp.response(201, ReferralOut)
@blp.doc(security=[{"bearerAuth": []}],
         parameters=[{"in": "header", "name": "Idempotency-Key", "schema": {"type": "string"}}])
def create_referral(body: dict[str, Any]) -> Response:
    """Submit a referral (officer). Retries with the same Idempotency-Key never duplicate."""
    principal = current_principal()

    def work(session: Any) -> tuple[int, dict[str, Any], str]:
        view = handlers.submit_referral(session, _ctx(), principal, body)
        return 201, ReferralOut().dump(view), view["id"]

    return idempotency.run(_db(), principal=f"{principal.role}:{principal.sub}",
                           key=idempotency.request_key(), payload=request.get_json(), work=work)


@blp.route("/referrals", methods=["GET"])
@requires("officer", "provider", "supervisor")
@blp.arguments(PageArgs, location="query")
@blp.response(200, ReferralPage)
@blp.doc(security=[{"bearerAuth": []}])
def list_referrals(args: dict[str, Any]) -> dict[str, Any]:
    """Officers: their own; providers: offered to or accepted by their organization;
    supervisors: their agency's, de-identified."""
    with _db().uow() as uow:
        items, total = handlers.list_for(uow.session, _ctx(), current_principal(),
                                         limit=args["limit"], offset=args["offset"])
    return {"items": items, "total": total, **args}


@blp.route("/referrals/<uuid:referral_id>", methods=["GET"])
@requires("officer", "provider", "supervisor")
@blp.response(200, ReferralOut)
@blp.doc(security=[{"bearerAuth": []}])
def get_referral(referral_id: Any) -> dict[str, Any]:
    with _db().uow() as uow:
        try:
            return handlers.view_for(uow.session, _ctx(), current_principal(), str(referral_id))
        except handlers.NotFound:
            raise Problem(404, "Not Found", "No such referral visible to you") from None


def register(api: Any) -> None:
    api.register_blueprint(blp)

