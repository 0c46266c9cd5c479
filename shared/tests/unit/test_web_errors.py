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


def test_nul_characters_are_refused_naming_the_field() -> None:
    app, _api = create_base_app("probe")

    @app.route("/echo", methods=["GET", "POST"])
    def echo() -> dict[str, str]:
        return {"ok": "yes"}

    client = app.test_client()
    resp = client.get("/echo?search=a%00b&page=1")
    assert resp.status_code == 422 and resp.headers["Content-Type"] == "application/problem+json"
    assert "search" in resp.get_json()["detail"] and "page" not in resp.get_json()["detail"]
    resp = client.post("/echo", json={"subject": {"given_name": "A\u0000"}, "tags": ["x", "\u0000"]})
    assert resp.status_code == 422
    assert resp.get_json()["detail"] == "Invalid or unknown fields: subject.given_name, tags.1"
    assert client.post("/echo", json={"note": "a backslash-u: \\u0000"}).status_code == 200
    assert client.get("/echo?search=plain").status_code == 200


def test_nul_in_a_path_parameter_is_refused() -> None:
    app, _api = create_base_app("probe")

    @app.get("/things/<thing_id>")
    def thing(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    resp = app.test_client().get("/things/a%00b")
    assert resp.status_code == 422 and "thing_id" in resp.get_json()["detail"]
