"""Hostile bodies against every endpoint that takes one: oversized, deeply nested,
malformed, mistyped and over-posted (mass assignment). Each gets a 4xx problem+json that
says what was wrong, and every response carries the security headers."""
from __future__ import annotations

import json
from typing import Any

import pytest
from werkzeug.test import TestResponse

from .conftest import Services
from .endpoints import Endpoint, endpoints

pytestmark = pytest.mark.security

# Fields a client must never set itself (server-assigned or ownership fields).
MASS_ASSIGNMENT = {"id": "00000000-0000-4000-8000-00000000c0de", "status": "forged-status",
                   "organization_id": "00000000-0000-4000-8000-00000000beef",
                   "created_at": "1999-01-01T00:00:00Z", "sequence": 987654321,
                   "role": "forged-role", "officer_ref": "forged-officer",
                   "agency": "forged-agency", "version": 7654321}


def assert_security_headers(resp: TestResponse, where: str) -> None:
    h = resp.headers
    assert h.get("X-Content-Type-Options") == "nosniff", where
    assert h.get("Referrer-Policy") == "no-referrer", where
    assert h.get("X-Frame-Options") == "DENY", where
    csp = h.get("Content-Security-Policy", "")
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, where
    if resp.mimetype in ("application/json", "application/problem+json"):
        assert "no-store" in h.get("Cache-Control", ""), where
    assert h.get("X-Request-ID"), where


def assert_problem(resp: TestResponse, status: int, where: str) -> dict[str, Any]:
    assert resp.status_code == status, (where, resp.status_code, resp.get_data()[:300])
    assert resp.mimetype == "application/problem+json", (where, resp.mimetype)
    body = resp.get_json()
    assert body["status"] == status and body["title"], where
    assert_security_headers(resp, where)
    return body  # type: ignore[no-any-return]


def _body_endpoints(services: Services, *, json_only: bool = True) -> list[Endpoint]:
    """Endpoints that take a body. ``json_only``: leave out the ones a service declared
    non-JSON (uploads with their own size limit and media types, e.g. an HSDS import)."""
    found = [e for name, app in services.apps.items() for e in endpoints(name, app)
             if e.roles and e.method in ("POST", "PUT", "PATCH") and not (
                 json_only and e.endpoint in app.extensions.get("non_json_endpoints", ()))]
    assert len(found) >= 8
    return found


def _body_properties(services: Services, e: Endpoint) -> set[str] | None:
    """The documented request-body fields of an endpoint (None: it takes no body)."""
    spec = services.client(e.service).get("/openapi.json").get_json()
    path = e.rule.replace("<uuid:", "{").replace("<", "{").replace(">", "}")
    op = spec["paths"][path][e.method.lower()]
    if "requestBody" not in op:
        return None
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return set(schema.get("properties", {}))


def _send(services: Services, e: Endpoint, data: bytes,
          content_type: str = "application/json") -> TestResponse:
    return services.client(e.service).open(
        e.path(), method=e.method, data=data,
        headers={**services.auth(e.roles[0]), "Content-Type": content_type})  # type: ignore[index]


def test_oversized_bodies_are_413(services: Services) -> None:
    for e in _body_endpoints(services):
        big = json.dumps({"notes": "x" * (64 * 1024)}).encode()
        assert_problem(_send(services, e, big), 413, str(e))


def test_deeply_nested_json_is_refused_not_a_crash(services: Services) -> None:
    json_bodies = set(_body_endpoints(services))
    for e in _body_endpoints(services, json_only=False):
        for body in (b"[" * 20000 + b"]" * 20000, b'{"a":' * 5000 + b"1" + b"}" * 5000):
            resp = _send(services, e, body)
            if e in json_bodies:
                assert "nested" in assert_problem(resp, 400, str(e))["detail"]
            else:  # an upload endpoint parses on its own: any 4xx problem, never a 5xx
                assert 400 <= resp.status_code < 500, (str(e), resp.status_code)
                assert resp.mimetype == "application/problem+json", str(e)


def test_malformed_json_and_wrong_types_are_problems(services: Services) -> None:
    for e in _body_endpoints(services):
        if _body_properties(services, e) is None:
            continue  # takes no body, so ignores one (the size and type checks still hold)
        for bad in (b'{"need": ', b"{'single': 'quotes'}", b"\xff\xfe{}", b"{}}"):
            assert_problem(_send(services, e, bad), 400, f"{e} {bad!r}")
        for text in (b"[]", b'"a string"', b"42", b"null", b"NaN", b'{"a": Infinity}'):
            resp = _send(services, e, text)
            assert 400 <= resp.status_code < 500, (str(e), text)
            assert resp.mimetype == "application/problem+json", (str(e), text)
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
            assert_problem(_send(services, e, b'{"a": 1}', ctype), 415, f"{e} {ctype}")


def test_client_set_server_fields_are_refused_naming_the_field(services: Services) -> None:
    checked = 0
    for e in _body_endpoints(services):
        documented = _body_properties(services, e)
        if documented is None:
            continue
        for field, value in MASS_ASSIGNMENT.items():
            if field in documented:
                continue  # a field the endpoint really takes (e.g. a provider's own org id)
            resp = _send(services, e, json.dumps({field: value}).encode())
            problem = assert_problem(resp, 422, f"{e} {field}")
            assert field in problem["detail"], (str(e), field, problem["detail"])
            assert str(value) not in resp.get_data(as_text=True), "input echoed back"
            checked += 1
    assert checked >= 40


def test_unknown_routes_and_methods_are_problems_with_headers(services: Services) -> None:
    for name in services.apps:
        client = services.client(name)
        assert_problem(client.get("/v1/no-such-thing"), 404, name)
        assert_problem(client.delete("/healthz"), 405, name)
        for path in ("/healthz", "/openapi.json", "/metrics"):
            resp = client.get(path)
            assert resp.status_code == 200, (name, path)
            assert_security_headers(resp, f"{name} {path}")
