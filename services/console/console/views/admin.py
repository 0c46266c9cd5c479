"""Admin: HSDS import with the per-record report, webhooks, failed deliveries with retry,
and verification of the audit hash chain."""
from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from ..client import ApiError
from ..security import api, roles

bp = Blueprint("admin", __name__, url_prefix="/admin")
MAX_IMPORT_BYTES = 50 * 1024 * 1024  # the registry's default REGISTRY_MAX_IMPORT_MB


@bp.get("/")
@roles("admin")
def home() -> str:
    return render_template("admin/home.html")


@bp.get("/import")
@roles("admin")
def import_form() -> str:
    return render_template("admin/import.html", report=None, error=None,
                           key=str(uuid.uuid4()))


@bp.post("/import")
@roles("admin")
def import_hsds() -> tuple[str, int]:
    """Forward the uploaded file as it is (HSDS JSON or a datapackage zip): the registry
    parses and validates it and answers the per-record report."""
    request.max_content_length = MAX_IMPORT_BYTES
    upload = request.files.get("file")
    key = request.form.get("idempotency_key") or str(uuid.uuid4())
    data = upload.read() if upload else b""
    if not data:
        return render_template("admin/import.html", report=None, key=key,
                               error="Choose an HSDS 3.0 JSON file or datapackage zip."), 422
    kind = "application/zip" if data[:2] == b"PK" else "application/json"
    try:
        report = api().call("provider-registry", "POST", "/v1/import/hsds", data=data,
                            headers={"Content-Type": kind, "Idempotency-Key": key})
    except ApiError as exc:
        if exc.status not in (400, 413, 415, 422):
            raise
        return render_template("admin/import.html", report=None, key=key,
                               error=f"The directory refused the file: {exc}"), exc.status
    return render_template("admin/import.html", report=report, error=None,
                           key=str(uuid.uuid4())), 200


@bp.get("/webhooks")
@roles("admin")
def webhooks() -> str:
    return render_template("admin/webhooks.html", created=None, key=str(uuid.uuid4()))


@bp.post("/webhooks")
@roles("admin")
def register_webhook() -> tuple[str, int]:
    body: dict[str, Any] = {"url": request.form.get("url", "").strip()}
    if request.form.get("organization_id", "").strip():
        body["organization_id"] = request.form["organization_id"].strip()
    try:
        created = api().post("notifications", "/v1/webhooks", body,
                             idempotency_key=request.form.get("idempotency_key"))
    except ApiError as exc:
        if exc.status != 422:
            raise
        from ..forms import field_errors

        return render_template("admin/webhooks.html", created=None, v=body,
                               errors=field_errors(exc.errors), problem=str(exc),
                               key=request.form.get("idempotency_key")), 422
    # the secret is shown once, in this response only
    return render_template("admin/webhooks.html", created=created, key=str(uuid.uuid4())), 201


@bp.get("/deliveries")
@roles("admin")
def deliveries() -> str:
    page = api().get("notifications", "/v1/deliveries", status="failed")
    return render_template("admin/deliveries.html", items=page.get("items", []))


@bp.post("/deliveries/<uuid:delivery_id>/retry")
@roles("admin")
def retry(delivery_id: uuid.UUID) -> Response:
    api().post("notifications", f"/v1/deliveries/{delivery_id}/retry", {})
    return redirect(url_for("admin.deliveries", retried=1), 303)


@bp.get("/audit")
@roles("admin")
def audit() -> str:
    return render_template("admin/audit.html", result=None)


@bp.post("/audit/verify")
@roles("admin")
def verify_audit() -> str:
    result = api().post("referral-intake", "/v1/audit/verify", {})
    return render_template("admin/audit.html", result=result or {})
