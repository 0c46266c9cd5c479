"""Supervisor: dashboard with charts, de-identified referrals, re-route and manual assign,
and break-glass access to personal data with a stated reason (audited by intake)."""
from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from .. import charts, forms
from ..client import ApiError, Unavailable
from ..security import api, roles

bp = Blueprint("supervisor", __name__, url_prefix="/supervisor")


def _list() -> list[dict[str, Any]]:
    return api().get("referral-intake", "/v1/referrals", limit=200)["items"]  # type: ignore


def _optional(service: str, path: str, **params: Any) -> tuple[Any, str | None]:
    """(answer, None) or (None, why not) for an endpoint the page can do without."""
    try:
        return api().get(service, path, **params), None
    except Unavailable:
        return None, "not available: the service does not offer this yet"
    except ApiError as exc:
        if exc.status in (401,):
            raise
        return None, f"not available: {exc}"


def _dashboard() -> dict[str, Any]:
    """What the dashboard shows: chart data, why statistics are missing, the unmatched queue."""
    stats, stats_missing = _optional("referral-intake", "/v1/stats")
    items = api().get("referral-intake", "/v1/referrals", status="unmatched", limit=100)["items"]
    data = charts.from_stats(stats) if stats else charts.from_list(_list())
    return {"d": data, "stats_missing": stats_missing, "unmatched": items, "f": forms}


@bp.get("/")
@roles("supervisor")
def dashboard() -> str:
    return render_template("supervisor/dashboard.html", live=True, **_dashboard())


@bp.get("/dashboard/numbers")
@roles("supervisor")
def dashboard_numbers() -> str:
    """The figures, charts and queue the dashboard refreshes (htmx, on a live event and every
    20 s)."""
    return render_template("partials/dashboard_numbers.html", **_dashboard())


@bp.get("/referrals")
@roles("supervisor")
def referrals() -> str:
    status = request.args.get("status") or None
    items = api().get("referral-intake", "/v1/referrals", status=status, limit=200)["items"]
    return render_template("supervisor/list.html", items=items, status=status, f=forms)


@bp.get("/referrals/<uuid:referral_id>")
@roles("supervisor")
def detail(referral_id: uuid.UUID, pii: dict[str, Any] | None = None) -> str:
    item = api().get("referral-intake", f"/v1/referrals/{referral_id}")
    timeline, timeline_missing = _optional("referral-intake",
                                           f"/v1/referrals/{referral_id}/timeline")
    decisions, decisions_missing = _optional("matching", f"/v1/referrals/{referral_id}/decisions")
    services, _ = _optional("provider-registry", "/v1/services", need=item.get("need"),
                            limit=100)
    return render_template("supervisor/detail.html", r=item, timeline=timeline,
                           timeline_missing=timeline_missing, decisions=decisions,
                           decisions_missing=decisions_missing, pii=pii,
                           services=(services or {}).get("items", []), f=forms)


@bp.post("/referrals/<uuid:referral_id>/reroute")
@roles("supervisor")
def reroute(referral_id: uuid.UUID) -> Response:
    api().post("referral-intake", f"/v1/referrals/{referral_id}/reroute", {})
    return redirect(url_for("supervisor.detail", referral_id=referral_id, done="reroute"), 303)


@bp.post("/referrals/<uuid:referral_id>/assign")
@roles("supervisor")
def assign(referral_id: uuid.UUID) -> Response:
    service_id = request.form.get("service_id", "")
    body = {"service_id": service_id}
    try:  # intake may not have heard of a brand-new service yet: name its organization
        uuid.UUID(service_id)
        service = api().get("provider-registry", f"/v1/services/{service_id}")
        body["organization_id"] = service["organization_id"]
    except (ValueError, ApiError):
        pass  # intake answers an unknown service with a problem naming the field
    api().post("referral-intake", f"/v1/referrals/{referral_id}/assign", body)
    return redirect(url_for("supervisor.detail", referral_id=referral_id, done="assign"), 303)


@bp.post("/referrals/<uuid:referral_id>/pii-access")
@roles("supervisor")
def pii_access(referral_id: uuid.UUID) -> str | tuple[str, int]:
    """Break-glass: the answer is rendered once, in this response; never stored or linked."""
    reason = request.form.get("reason", "").strip()
    try:
        pii = api().post("referral-intake", f"/v1/referrals/{referral_id}/pii-access",
                         {"reason": reason})
    except ApiError as exc:
        if exc.status != 422:
            raise
        return render_template("error.html", message="Give a reason for opening the "
                               "resident's details: " + (forms.field_errors(exc.errors).get(
                                   "reason") or str(exc))), 422
    return detail(referral_id, pii=pii or {})
