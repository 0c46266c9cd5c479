"""Provider staff: offer inbox (by deadline, with a countdown), accept/decline, cases,
progress and close, and the capacity and accepting toggle of the organization's services."""
from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from servicekit import events

from .. import forms
from ..client import ApiError
from ..security import api, current_user, roles

bp = Blueprint("provider", __name__, url_prefix="/provider")
DECLINE_REASONS = {  # events.DECLINE_REASONS in plain language
    "no_capacity": "We have no room right now", "not_eligible": "The resident is not eligible",
    "out_of_area": "Outside our area", "language": "We cannot serve in the resident's language",
    "unable_to_serve": "We cannot serve this need", "duplicate": "We already have this referral",
    "other": "Another reason",
}
OUTCOMES = {
    "connected": "Connected to the service", "enrolled": "Enrolled",
    "resident_declined": "Resident declined", "unable_to_contact": "Could not reach the resident",
    "ineligible": "Not eligible", "no_show": "Did not show up", "moved": "Moved away",
    "other": "Other",
}
ACTIVE = ("accepted", "in_progress", "on_hold")
assert set(DECLINE_REASONS) == set(events.DECLINE_REASONS)


def _referrals() -> list[dict[str, Any]]:
    return api().get("referral-intake", "/v1/referrals", limit=100)["items"]  # type: ignore


def _offers() -> list[dict[str, Any]]:
    open_offers = [r for r in _referrals()
                   if (r.get("offer") or {}).get("status") == "open"]
    return sorted(open_offers, key=lambda r: r["offer"].get("expires_at") or "")


@bp.get("/inbox")
@roles("provider")
def inbox() -> str:
    return render_template("provider/inbox.html", offers=_offers(), reasons=DECLINE_REASONS,
                           live=True)


@bp.get("/inbox/offers")
@roles("provider")
def inbox_offers() -> str:
    """The offer list alone, refreshed by htmx when a live event arrives."""
    return render_template("partials/offers.html", offers=_offers(), reasons=DECLINE_REASONS)


@bp.post("/referrals/<uuid:referral_id>/accept")
@roles("provider")
def accept(referral_id: uuid.UUID) -> Response:
    api().post("referral-intake", f"/v1/referrals/{referral_id}/accept", {})
    return redirect(url_for("provider.case", referral_id=referral_id), 303)


@bp.post("/referrals/<uuid:referral_id>/decline")
@roles("provider")
def decline(referral_id: uuid.UUID) -> Response:
    reason = request.form.get("reason", "")
    api().post("referral-intake", f"/v1/referrals/{referral_id}/decline", {"reason": reason})
    return redirect(url_for("provider.inbox"), 303)


@bp.get("/cases")
@roles("provider")
def cases() -> str:
    items = _referrals()
    mine = [r for r in items if r.get("status") in ACTIVE]
    closed = [r for r in items if r.get("status") in events.TERMINAL_STATUSES]
    return render_template("provider/cases.html", cases=mine, closed=closed, f=forms)


@bp.get("/cases/<uuid:referral_id>")
@roles("provider")
def case(referral_id: uuid.UUID) -> str:
    item = api().get("referral-intake", f"/v1/referrals/{referral_id}")
    return render_template("provider/case.html", r=item, outcomes=OUTCOMES, f=forms,
                           reasons=DECLINE_REASONS)


@bp.post("/cases/<uuid:referral_id>/progress")
@roles("provider")
def progress(referral_id: uuid.UUID) -> Response:
    body = {"status": request.form.get("status", "")}
    if request.form.get("note", "").strip():
        body["note"] = request.form["note"].strip()
    api().post("referral-intake", f"/v1/referrals/{referral_id}/progress", body)
    return redirect(url_for("provider.case", referral_id=referral_id), 303)


@bp.post("/cases/<uuid:referral_id>/close")
@roles("provider")
def close(referral_id: uuid.UUID) -> Response:
    body = {"outcome": request.form.get("outcome", ""),
            "outcome_code": request.form.get("outcome_code", "")}
    api().post("referral-intake", f"/v1/referrals/{referral_id}/close", body)
    return redirect(url_for("provider.cases"), 303)


def _own_services() -> list[dict[str, Any]]:
    user = current_user()
    org = user.org if user else None
    return api().get("provider-registry", "/v1/services", organization_id=org,  # type: ignore
                     limit=100)["items"]


@bp.get("/capacity")
@roles("provider")
def capacity() -> str:
    return render_template("provider/capacity.html", services=_own_services())


@bp.post("/capacity/<uuid:service_id>")
@roles("provider")
def set_capacity(service_id: uuid.UUID) -> Response | tuple[str, int]:
    maximum = request.form.get("maximum", "").strip()
    body = {"maximum": int(maximum) if maximum.isdigit() else maximum,
            "accepting": request.form.get("accepting") == "yes"}
    try:
        api().put("provider-registry", f"/v1/services/{service_id}/capacity", body)
    except ApiError as exc:
        if exc.status != 422:
            raise
        return render_template("provider/capacity.html", services=_own_services(),
                               errors={str(service_id): forms.field_errors(exc.errors)}), 422
    return redirect(url_for("provider.capacity", saved=1), 303)
