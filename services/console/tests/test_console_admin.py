"""Admin pages against the real registry, notifications and intake apis."""
from __future__ import annotations

import io
import re

import pytest
import requests
from console_testkit import Backend, sign_in
from flask import Flask

from servicekit import demo
from servicekit.auth import mint_dev_token

pytestmark = pytest.mark.integration
ADMIN = 4


def _admin_headers(backend: Backend) -> dict[str, str]:
    token = mint_dev_token(backend.settings["provider-registry"], sub="admin-t", role="admin")
    return {"Authorization": f"Bearer {token}"}


def test_hsds_import_shows_the_per_record_report(console: Flask, backend: Backend) -> None:
    exported = requests.get(backend.urls["provider-registry"] + "/v1/export/hsds",
                            headers=_admin_headers(backend), timeout=10)
    assert exported.status_code == 200
    client = console.test_client()
    csrf = sign_in(client, ADMIN)
    page = client.get("/admin/import").text
    key = re.search(r'name="idempotency_key" value="([^"]+)"', page).group(1)  # type: ignore
    resp = client.post("/admin/import", content_type="multipart/form-data", data={
        "csrf_token": csrf, "idempotency_key": key,
        "file": (io.BytesIO(exported.content), "directory.json")})
    assert resp.status_code == 200, resp.text
    counts = dict(re.findall(r'data-count="(\w+)">(\d+)<', resp.text))
    total = sum(int(counts[k]) for k in ("created", "updated", "unchanged", "rejected"))
    assert total == len(exported.json()) and counts["rejected"] == "0"
    bad = client.post("/admin/import", content_type="multipart/form-data", data={
        "csrf_token": csrf, "file": (io.BytesIO(b"{not json"), "broken.json")})
    assert bad.status_code == 422 and "refused the file" in bad.text


def test_webhook_secret_is_shown_once_and_bad_urls_are_explained(
        console: Flask, backend: Backend) -> None:
    client = console.test_client()
    csrf = sign_in(client, ADMIN)
    bad = client.post("/admin/webhooks", data={"csrf_token": csrf, "url": "ftp://x.example",
                                               "organization_id": demo.DEMO_ORG_ID})
    assert bad.status_code == 422
    assert re.search(r'id="err-url">[^<]*scheme must be https', bad.text)
    made = client.post("/admin/webhooks", data={
        "csrf_token": csrf, "url": "https://127.0.0.1:9/hook",
        "organization_id": demo.DEMO_ORG_ID})
    assert made.status_code == 201
    secret = re.search(r"<dt>secret</dt><dd><code>([^<]+)</code>", made.text)
    assert secret and len(secret.group(1)) >= 16
    assert secret.group(1) not in client.get("/admin/webhooks").text


def test_failed_deliveries_and_audit_verification(console: Flask, backend: Backend) -> None:
    client = console.test_client()
    csrf = sign_in(client, ADMIN)
    deliveries = client.get("/admin/deliveries")
    assert deliveries.status_code == 200 and "No failed deliveries." in deliveries.text
    verified = client.post("/admin/audit/verify", data={"csrf_token": csrf})
    assert verified.status_code == 200 and "Chain intact" in verified.text


def test_a_failed_delivery_is_listed_and_retried(console: Flask, backend: Backend) -> None:
    """A webhook delivery that used up its attempts: the admin sees it (ids and our own
    error text only) and queues a manual retry, which gives it a fresh attempt budget."""
    import uuid
    from datetime import UTC, datetime

    from sqlalchemy import create_engine, text

    now = datetime.now(UTC)
    note_id, delivery_id = str(uuid.uuid4()), str(uuid.uuid4())
    engine = create_engine(backend.settings["notifications"].database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO notifications (id, recipient_kind, recipient_id, channel, "
                "referral_id, short_id, event_id, kind, title, body, link, created_at) VALUES "
                "(:id, 'org', :org, 'webhook', :rid, 'R-TEST1', :eid, 'offer_made', 't', 'b', "
                "'/r', :now)"), {"id": note_id, "org": demo.DEMO_ORG_ID,
                                 "rid": str(uuid.uuid4()), "eid": str(uuid.uuid4()), "now": now})
            conn.execute(text(
                "INSERT INTO deliveries (id, notification_id, channel, target_kind, target_id, "
                "status, attempt, retry_base, error, last_status_code, created_at, updated_at) "
                "VALUES (:id, :nid, 'webhook', 'webhook', 'wh-test', 'failed', 8, 0, "
                "'target answered 503', 503, :now, :now)"),
                {"id": delivery_id, "nid": note_id, "now": now})
        client = console.test_client()
        csrf = sign_in(client, ADMIN)
        listed = client.get("/admin/deliveries").text
        assert "target answered 503" in listed and "(HTTP 503)" in listed
        assert f"/admin/deliveries/{delivery_id}/retry" in listed
        retried = client.post(f"/admin/deliveries/{delivery_id}/retry",
                              data={"csrf_token": csrf}, follow_redirects=True)
        assert retried.status_code == 200 and "Retry queued." in retried.text
        assert f"/admin/deliveries/{delivery_id}/retry" not in retried.text
        with engine.connect() as conn:
            status, base = conn.execute(text(
                "SELECT status, retry_base FROM deliveries WHERE id = :id"),
                {"id": delivery_id}).one()
        assert (status, base) == ("pending", 8)
    finally:
        engine.dispose()
