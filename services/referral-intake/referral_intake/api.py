"""referral-intake HTTP API: thin; parse with marshmallow, call a handler, dump the result.

Authorization answers (README "403 or 404"): a role that may never use an endpoint gets
403; a referral the caller may not see, or may not act on, is 404, the same as one that
does not exist, so ids cannot be probed. Illegal transitions are 409 with the current
status in ``current_status``.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from flask import Response, current_app, request
from flask_smorest import Blueprint
from sqlalchemy.exc import IntegrityError

from servicekit import idempotency
from servicekit.auth import current_principal, requires
from servicekit.db import Database
from servicekit.web import Problem, problem_response

from . import actions, domain, handlers, views
from .schemas import (
    AssignIn,
    CloseIn,
    ConsentIn,
    DeclineIn,
    EmptyIn,
    FullReferralOut,
    FullReferralPage,
    PiiAccessIn,
    ProgressIn,
    ReferralCreateIn,
    ReferralListArgs,
)

blp = Blueprint("referrals", __name__, url_prefix="/v1", description="Referrals")
SECURED: list[dict[str, list[str]]] = [{"bearerAuth": []}]
IDEMPOTENCY_DOC = [{"in": "header", "name": "Idempotency-Key", "schema": {"type": "string"}}]


def _db() -> Database:
    return current_app.extensions["db"]  # type: ignore[no-any-return]


def _ctx() -> handlers.Context:
    return current_app.extensions["intake_ctx"]  # type: ignore[no-any-return]


def conflict(detail: str, current: str, type_: str = "/problems/illegal-transition"
             ) -> Response:
    resp = problem_response(409, "Conflict", detail, type_=type_)
    body = json.loads(resp.get_data())
    body["current_status"] = current
    resp.set_data(json.dumps(body))
    return resp


def translate(error: Exception) -> Response:
    """Domain and lookup errors as problem+json (no PII: only statuses and field names)."""
    if isinstance(error, (handlers.NotFound, domain.NoOffer)):
        raise Problem(404, "Not Found", "No such referral visible to you")
    if isinstance(error, domain.IllegalTransition):
        return conflict(f"Cannot move the referral from {error.current} to {error.target}.",
                        error.current)
    if isinstance(error, domain.OfferNotOpen):
        return conflict(f"The offer is {error.offer_status}; it can no longer be answered.",
                        error.current, "/problems/offer-not-open")
    if isinstance(error, domain.AlreadyTried):
        return conflict("This service was already offered the referral.", error.current,
                        "/problems/already-tried")
    if isinstance(error, handlers.Invalid):
        raise Problem(422, "Unprocessable Content", f"Invalid field: {error.field}",
                      type_="/problems/validation", errors={error.field: [error.message]})
    raise error


_EXPECTED = (handlers.NotFound, handlers.Invalid, domain.DomainError)
_REFERRAL_OUT = FullReferralOut()  # built once: a schema instance deep-copies its fields


def _without_pii(body: dict[str, Any]) -> dict[str, Any]:
    """Command answers are stored for Idempotency-Key replays: they never carry PII (the
    caller reads contact details with GET, which is audited each time)."""
    if "short_id" in body:
        body = _REFERRAL_OUT.dump({k: v for k, v in body.items()
                                       if k not in ("contact", "pii")})
    return json.loads(json.dumps(body, default=str))  # type: ignore[no-any-return]


_SUBMITTED_FIELDS = ("id", "short_id", "need", "urgency", "status", "created_at", "consent",
                     "provider", "outcome_code")  # FullReferralOut's order


def _submitted_answer(view: dict[str, Any]) -> dict[str, Any]:
    """``_without_pii(view)`` of a new referral's view (``views.submitted_view``: ids, codes,
    the consent record and ``created_at``, never PII), without the schema's dump and the
    JSON round trip: ``created_at`` as the schema's ISO form, ``consent.captured_at`` as
    ``str()`` (json's ``default=str``). A test holds it equal to ``_without_pii``."""
    if set(view) - set(_SUBMITTED_FIELDS):
        return _without_pii(view)  # not the shape this shortcut knows
    out = {k: view[k] for k in _SUBMITTED_FIELDS if k in view}
    out["created_at"] = out["created_at"].isoformat()
    consent = out["consent"] = dict(out["consent"])
    consent["contact_methods"] = list(consent["contact_methods"])
    consent["captured_at"] = str(consent["captured_at"])
    return out


def run_command(work: Callable[[Any], dict[str, Any]], status: int = 200,
                replayable: bool = True) -> Response:
    """Run a state-changing command once per Idempotency-Key, committing its effects.
    ``replayable=False``: the answer holds PII, so it is never stored; no key support."""
    principal = current_principal()
    if not replayable:
        return read(work)  # type: ignore[no-any-return]

    def unit(session: Any) -> tuple[int, dict[str, Any], str | None]:
        return status, _without_pii(work(session)), None

    try:
        return idempotency.run(_db(), principal=f"{principal.role}:{principal.sub}",
                               key=idempotency.request_key(), payload=request.get_json(silent=True),
                               work=unit)
    except _EXPECTED as error:
        return translate(error)


def read(work: Callable[[Any], Any]) -> Any:
    """A read in its own transaction, committed because decrypting reads are audited."""
    try:
        with _db().transaction() as session:
            return work(session)
    except _EXPECTED as error:
        return translate(error)


@blp.route("/referrals", methods=["POST"])
@requires("officer")
@blp.arguments(ReferralCreateIn)
@blp.response(201, FullReferralOut)
@blp.doc(security=SECURED, parameters=IDEMPOTENCY_DOC)
def create_referral(body: dict[str, Any]) -> Response:
    """Submit a referral (officer). Retries with the same Idempotency-Key never duplicate."""
    principal = current_principal()

    def work(session: Any, answer: idempotency.Answer) -> None:
        # the key row is written in the referral's own statement (handlers.submit_referral)
        handlers.submit_referral(session, _ctx(), principal, body, answer=lambda view, rid:
                                 answer(201, _submitted_answer(view), rid))

    for attempt in range(_SHORT_ID_DRAWS):
        try:
            return idempotency.run(_db(), principal=f"{principal.role}:{principal.sub}",
                                   key=idempotency.request_key(), payload=request.get_json(),
                                   work=work, check_first=False,  # new keys are the rule
                                   writes_key=True)
        except IntegrityError as error:
            # another referral already has the short id: nothing was committed, so submit
            # again under a new referral id (and short id)
            if attempt + 1 == _SHORT_ID_DRAWS or not _short_id_clash(error):
                raise
        except _EXPECTED as error:
            return translate(error)
    raise AssertionError("unreachable")


_SHORT_ID_DRAWS = 3  # a clash is about one in 10^6 at a thousand referrals: three is plenty


def _short_id_clash(error: IntegrityError) -> bool:
    diag = getattr(error.orig, "diag", None)
    name = getattr(diag, "constraint_name", None) or str(error.orig)
    return "short_id" in name


@blp.route("/referrals", methods=["GET"])
@requires("officer", "provider", "supervisor")
@blp.arguments(ReferralListArgs, location="query")
@blp.response(200, FullReferralPage)
@blp.doc(security=SECURED)
def list_referrals(args: dict[str, Any]) -> Any:
    """Officers: their own; providers: offered to or accepted by their organization;
    supervisors: their agency's, de-identified."""
    def work(session: Any) -> dict[str, Any]:
        items, total = views.list_for(session, _ctx(), current_principal(),
                                      limit=args["limit"], offset=args["offset"],
                                      status=args.get("status"))
        return {"items": items, "total": total, **args}
    return read(work)


@blp.route("/referrals/<uuid:referral_id>", methods=["GET"])
@requires("officer", "provider", "supervisor")
@blp.response(200, FullReferralOut)
@blp.doc(security=SECURED)
def get_referral(referral_id: Any) -> Any:
    return read(lambda s: views.view_for(s, _ctx(), current_principal(), str(referral_id)))


@blp.route("/referrals/<uuid:referral_id>/timeline", methods=["GET"])
@requires("officer", "provider", "supervisor")
@blp.doc(security=SECURED)
def get_timeline(referral_id: Any) -> Any:
    """The referral's history as the caller may see it."""
    def work(session: Any) -> dict[str, Any]:
        entries = views.timeline_for(session, _ctx(), current_principal(), str(referral_id))
        return {"referral_id": str(referral_id), "items": entries}
    return read(work)


def _provider_action(referral_id: Any, fn: Callable[..., dict[str, Any]], *args: Any,
                     replayable: bool = True) -> Response:
    return run_command(lambda s: fn(s, _ctx(), current_principal(), str(referral_id), *args),
                       replayable=replayable)


@blp.route("/referrals/<uuid:referral_id>/accept", methods=["POST"])
@requires("provider")
@blp.arguments(EmptyIn, required=False)
@blp.doc(security=SECURED, parameters=IDEMPOTENCY_DOC)
def accept(_body: Any, referral_id: Any) -> Response:
    """Accept the open offer made to your organization (409 once expired or withdrawn)."""
    return _provider_action(referral_id, actions.accept)


@blp.route("/referrals/<uuid:referral_id>/decline", methods=["POST"])
@requires("provider")
@blp.arguments(DeclineIn)
@blp.doc(security=SECURED, parameters=IDEMPOTENCY_DOC)
def decline(body: dict[str, Any], referral_id: Any) -> Response:
    return _provider_action(referral_id, actions.decline, body["reason"])


@blp.route("/referrals/<uuid:referral_id>/progress", methods=["POST"])
@requires("provider")
@blp.arguments(ProgressIn)
@blp.doc(security=SECURED, parameters=IDEMPOTENCY_DOC)
def progress(body: dict[str, Any], referral_id: Any) -> Response:
    return _provider_action(referral_id, actions.progress, body["status"], body.get("note"))


@blp.route("/referrals/<uuid:referral_id>/close", methods=["POST"])
@requires("provider")
@blp.arguments(CloseIn)
@blp.doc(security=SECURED, parameters=IDEMPOTENCY_DOC)
def close(body: dict[str, Any], referral_id: Any) -> Response:
    return _provider_action(referral_id, actions.close, body["outcome"], body["outcome_code"],
                            body.get("note"))


@blp.route("/referrals/<uuid:referral_id>/cancel", methods=["POST"])
@requires("officer", "supervisor")
@blp.arguments(EmptyIn, required=False)
@blp.doc(security=SECURED, parameters=IDEMPOTENCY_DOC)
def cancel(_body: Any, referral_id: Any) -> Response:
    return _provider_action(referral_id, actions.cancel)


@blp.route("/referrals/<uuid:referral_id>/entered-in-error", methods=["POST"])
@requires("supervisor")
@blp.arguments(EmptyIn, required=False)
@blp.doc(security=SECURED, parameters=IDEMPOTENCY_DOC)
def entered_in_error(_body: Any, referral_id: Any) -> Response:
    return _provider_action(referral_id, actions.enter_in_error)


@blp.route("/referrals/<uuid:referral_id>/reroute", methods=["POST"])
@requires("supervisor")
@blp.arguments(EmptyIn, required=False)
@blp.doc(security=SECURED, parameters=IDEMPOTENCY_DOC)
def reroute(_body: Any, referral_id: Any) -> Response:
    return _provider_action(referral_id, actions.reroute)


@blp.route("/referrals/<uuid:referral_id>/assign", methods=["POST"])
@requires("supervisor")
@blp.arguments(AssignIn)
@blp.doc(security=SECURED, parameters=IDEMPOTENCY_DOC)
def assign(body: dict[str, Any], referral_id: Any) -> Response:
    return _provider_action(referral_id, actions.assign, body["service_id"],
                            body.get("organization_id"))


@blp.route("/referrals/<uuid:referral_id>/consent", methods=["PUT"])
@requires("officer", "supervisor")
@blp.arguments(ConsentIn)
@blp.doc(security=SECURED)
def put_consent(body: dict[str, Any], referral_id: Any) -> Response:
    """Record the resident's new consent; narrowing applies at once everywhere."""
    return _provider_action(referral_id, actions.change_consent, body)


@blp.route("/referrals/<uuid:referral_id>/consent", methods=["GET"])
@requires("officer", "supervisor")
@blp.doc(security=SECURED)
def get_consent(referral_id: Any) -> Any:
    def work(session: Any) -> dict[str, Any]:
        views.visible_ref(session, current_principal(), str(referral_id))
        return actions.consent_history(session, _ctx(), current_principal(), str(referral_id))
    return read(work)


@blp.route("/referrals/<uuid:referral_id>/subject", methods=["DELETE"])
@requires("supervisor")
@blp.doc(security=SECURED)
def erase_subject(referral_id: Any) -> Response:
    """Erasure: destroy the resident's data key (every referral sharing it); irreversible."""
    return _provider_action(referral_id, actions.erase_subject)


@blp.route("/referrals/<uuid:referral_id>/pii-access", methods=["POST"])
@requires("supervisor")
@blp.arguments(PiiAccessIn)
@blp.doc(security=SECURED)
def pii_access(body: dict[str, Any], referral_id: Any) -> Response:
    """Break-glass: the resident's PII for a limited time, with a stated reason; audited."""
    return _provider_action(referral_id, actions.grant_pii_access, body["reason"],
                            replayable=False)


@blp.route("/me", methods=["GET"])
@requires("officer", "provider", "supervisor", "admin")
@blp.doc(security=SECURED)
def me() -> dict[str, Any]:
    """Who the token says you are (role and scope); no database access."""
    p = current_principal()
    return {"sub": p.sub, "role": p.role, "agency": p.agency, "org": p.org}


def register(api: Any) -> None:
    from . import api_admin

    api.register_blueprint(blp)
    api.register_blueprint(api_admin.blp)
