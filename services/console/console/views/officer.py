"""Officer: the referral form, its confirmation with live status, and "my referrals"."""
from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from .. import forms, geocode
from ..client import ApiError, SessionExpired
from ..config import ConsoleConfig
from ..security import api, roles, to_sign_in

bp = Blueprint("officer", __name__)


def _geocoder() -> geocode.Geocoder | None:
    config: ConsoleConfig = current_app.extensions["console"]
    return config.geocoder


def _form_page(values: dict[str, Any], errors: dict[str, str], key: str,
               problem: str | None = None, status: int = 200,
               places: list[geocode.Place] | None = None,
               found: str | None = None) -> tuple[str, int]:
    return render_template("officer/form.html", v=values, errors=errors, key=key,
                           problem=problem, f=forms, geocoder=_geocoder() is not None,
                           places=places or [], found=found), status


def _locate(values: dict[str, Any]) -> tuple[list[geocode.Place], str | None]:
    """Look up the typed address: (places found, None) or ([], why not, for the field)."""
    geocoder, address = _geocoder(), str(values.get("location.address", "")).strip()
    assert geocoder is not None
    if not address:
        return [], "Type a street address with its house number, or a place's name."
    try:
        places = geocoder.search(address)
    except geocode.GeocoderUnavailable as exc:
        return [], f"Could not look up the address: {exc}. Use your location or type the coordinates."
    if not places:
        return [], ("No place found for this address. Check the house number and street, "
                    "use your location, or type the coordinates.")
    return places, None


def _looked_up(values: dict[str, Any], key: str, sending: bool) -> tuple[str, int] | None:
    """Fill the coordinates from the typed address (one place found, or the one picked).
    Returns the form page to show instead of sending (several places, none, lookup asked)."""
    if sending:
        if values.get("location.lat") or values.get("location.lon"):
            return None  # coordinates given: typed, from the phone, or filled by a lookup
        lat, _, lon = str(values.get("location.pick", "")).partition(",")
        if lat and lon:
            values["location.lat"], values["location.lon"] = lat, lon
            return None
        if _geocoder() is None or not values.get("location.address"):
            return None  # nothing to look up: the API names the missing coordinates
    elif _geocoder() is None:
        return _form_page(values, {}, key, "Address lookup is off here. Use your location "
                          "or type the coordinates.")
    else:  # a new lookup replaces coordinates typed or found before
        values["location.lat"] = values["location.lon"] = ""
    places, problem = _locate(values)
    if problem:
        return _form_page(values, {"location.address": problem}, key,
                          "Please fix the fields marked below." if sending else None,
                          status=422 if sending else 200)
    if len(places) == 1:
        values["location.lat"], values["location.lon"] = f"{places[0].lat:.5f}", f"{places[0].lon:.5f}"
        if sending:
            return None
        return _form_page(values, {}, key, found=places[0].label)
    return _form_page(values, {"location.address": "Several places match. Choose one below."
                               + (" Then send again." if sending else "")}, key,
                      status=422 if sending else 200, places=places)


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
              else request.form.get(k, "") for k in request.form if k != "action"}
    shown = _looked_up(values, key, sending=request.form.get("action") != "locate")
    if shown is not None:
        return shown
    try:
        created = api().post("referral-intake", "/v1/referrals", forms.referral_body(values),
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
