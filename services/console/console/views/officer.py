"""Officer: the referral form, its confirmation with live status, and "my referrals"."""
from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from .. import forms
from ..client import ApiError, SessionExpired
from ..security import api, roles, to_sign_in

bp = Blueprint("officer", __name__)


def _form_page(values: dict[str, Any], errors: dict[str, str], key: str,
               problem: str | None = None, status: int = 200) -> tuple[str, int]:
    return render_template("officer/form.html", v=values, errors=errors, key=key,
                           problem=problem, f=forms), status


@bp.get("/referrals/new")
@roles("officer")
def new_referral() -> tuple[str, int]:
    # one Idempotency-Key per rendered form: a double tap or a retry creates one referral
    return _form_page({}, {}, str(uuid.uuid4()))


@bp.post("/referrals/new")
@roles("officer")
def submit_referral() -> Response | tuple[str, int]:
    key = request.form.get("idempotency_key", "")
    try:
        uuid.UUID(key)
    except ValueError:
        key = str(uuid.uuid4())
    values = {k: request.form.getlist(k) if k in ("flags", "consent.contact_methods")
              else request.form.get(k, "") for k in request.form}
    try:
        created = api().post("referral-intake", "/v1/referrals", forms.referral_body(request.form),
                             idempotency_key=key)
    except SessionExpired:
        return to_sign_in()
    except ApiError as exc:
        errors = forms.field_errors(exc.errors)
        summary = None if errors else str(exc)
        return _form_page(values, errors, key, summary or "Please fix the fields marked below.",
                          status=exc.status if exc.status in (409, 422) else 502)
    return redirect(url_for("officer.referral", referral_id=created["id"], sent=1), 303)


def _one(referral_id: str) -> dict[str, Any]:
    return api().get("referral-intake", f"/v1/referrals/{referral_id}")  # type: ignore[no-any-return]


@bp.get("/referrals/<uuid:referral_id>")
@roles("officer")
def referral(referral_id: uuid.UUID) -> Response | tuple[str, int]:
    item = _one(str(referral_id))  # errors: the app's handlers (sign-in, error page)
    return render_template("officer/referral.html", r=item, f=forms,
                           sent=bool(request.args.get("sent"))), 200


@bp.get("/referrals/<uuid:referral_id>/status")
@roles("officer")
def referral_status(referral_id: uuid.UUID) -> Response | tuple[str, int]:
    """The status fragment the confirmation page refreshes (htmx)."""
    try:
        item = _one(str(referral_id))
    except SessionExpired:
        raise
    except ApiError:  # 204: htmx keeps what is shown and polls again
        return "", 204
    return render_template("partials/referral_status.html", r=item, f=forms), 200


@bp.get("/referrals")
@roles("officer")
def my_referrals() -> Response | tuple[str, int]:
    page = api().get("referral-intake", "/v1/referrals", limit=100)
    return render_template("officer/list.html", items=page["items"], f=forms), 200
