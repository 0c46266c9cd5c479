"""A lost database answers 503 problem+json with Retry-After; other failures stay 500."""
from __future__ import annotations

from sqlalchemy.exc import OperationalError

from servicekit.web import create_base_app


def _app():  # type: ignore[no-untyped-def]
    app, _api = create_base_app("probe")

    @app.post("/down")
    def down() -> None:
        raise OperationalError("COMMIT", {}, ConnectionError("server closed the connection"))

    @app.post("/bug")
    def bug() -> None:
        raise RuntimeError("a bug")

    return app


def test_database_unavailable_is_503_with_retry_after() -> None:
    resp = _app().test_client().post("/down", json={})
    assert resp.status_code == 503
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert resp.headers["Retry-After"] == "2"
    assert resp.get_json()["status"] == 503
    assert "COMMIT" not in resp.text and "closed" not in resp.text


def test_other_errors_stay_500_and_say_nothing_inside() -> None:
    resp = _app().test_client().post("/bug", json={})
    assert resp.status_code == 500 and "a bug" not in resp.text
