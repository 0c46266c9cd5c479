"""The intake audit log is a hash chain: editing or deleting a row in the database behind
the service's back is reported by the verify endpoint, naming where the chain breaks."""
from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import Engine, create_engine, text

from servicekit import demo

from .conftest import Services
from .test_pii_canary import _referral

pytestmark = pytest.mark.security


def _verify(services: Services) -> dict[str, object]:
    resp = services.client("referral-intake").post("/v1/audit/verify",
                                                   headers=services.auth("admin"))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()  # type: ignore[no-any-return]


def test_edited_or_deleted_audit_rows_are_detected(services: Services) -> None:
    officer = services.auth("officer", sub="officer-audit", agency=demo.AGENCY)
    created = services.client("referral-intake").post(
        "/v1/referrals", json=_referral(), headers={**officer,
                                                     "Idempotency-Key": str(uuid.uuid4())})
    assert created.status_code == 201
    clean = _verify(services)
    assert clean["ok"] is True and int(clean["rows"]) > 0  # type: ignore[call-overload]

    engine = create_engine(services.apps["referral-intake"].extensions["db"].engine.url)
    try:
        with engine.begin() as conn:
            row = dict(conn.execute(text("SELECT * FROM audit_log ORDER BY seq DESC LIMIT 1")
                                    ).mappings().one())
        with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
            conn.execute(text(UPDATE_OUTCOME), {"hash": row["hash"], "v": "tampered"})
        # Someone with the database owner's rights can switch the trigger off; the chain
        # still tells.
        for sql, field in ((UPDATE_OUTCOME, "outcome"), (UPDATE_ACTOR, "actor")):
            _behind_the_back(engine, sql, {"hash": row["hash"], "v": "someone-else"})
            broken = _verify(services)
            assert broken["ok"] is False and broken["problem"], broken
            _behind_the_back(engine, sql, {"hash": row["hash"], "v": row[field]})
            assert _verify(services)["ok"] is True
        _behind_the_back(engine, "DELETE FROM audit_log WHERE hash = :hash",
                         {"hash": row["hash"]})
        assert _verify(services)["ok"] is False
        columns = ", ".join(row)
        values = ", ".join(f"CAST(:{k} AS json)" if isinstance(v, (dict, list)) else f":{k}"
                           for k, v in row.items())
        _behind_the_back(engine, f"INSERT INTO audit_log ({columns}) VALUES ({values})",
                         {k: json.dumps(v) if isinstance(v, (dict, list)) else v
                          for k, v in row.items()})
        assert _verify(services)["ok"] is True
    finally:
        engine.dispose()


UPDATE_OUTCOME = "UPDATE audit_log SET outcome = :v WHERE hash = :hash"
UPDATE_ACTOR = "UPDATE audit_log SET actor = :v WHERE hash = :hash"


def _behind_the_back(engine: Engine, sql: str, params: dict[str, object]) -> None:
    """Run ``sql`` with triggers off for this transaction (as a database owner could)."""
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text(sql), params)
