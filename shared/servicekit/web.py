"""Flask helpers every service api uses.

``create_base_app`` gives a Flask app with: RFC 9457 problem+json errors for everything
(validation, auth, HTTP errors, unexpected failures), request and correlation ids, a 64 KB
body limit and a JSON content-type check, security headers, Prometheus ``/metrics``,
``/healthz`` and ``/readyz`` (database and broker), and OpenAPI at ``/openapi.json``
(flask-smorest). Idempotency-Key support lives in :mod:`servicekit.idempotency`.
"""
from __future__ import annotations

import logging
import re
import time
import uuid
from datetime import date, datetime
from types import FunctionType
from typing import Any, Callable

from flask import Flask, Response, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from flask_smorest import Api, Blueprint
from marshmallow import Schema, ValidationError
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import HTTPException

from . import logs
from .db import is_unavailable
from .auth import AuthError
from .ratelimit import REJECTED as RATE_LIMITED
from .ratelimit import AuthFailureLimiter

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32  # deeper bodies are refused before any parser recurses into them
OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
# A string (its closing quote optional, so an unterminated one ends the scan instead of
# being retried from every later quote: linear time on hostile input) or a bracket.
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"?|[\[\]{}]')
PROBLEM_JSON = "application/problem+json"
MAX_CACHED_LABEL_SETS = 1000
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")

REQUESTS = Counter("http_requests_total", "HTTP requests", ["service", "endpoint", "method",
                                                            "status"])
LATENCY = Histogram("http_request_duration_seconds", "HTTP request latency",
                    ["service", "endpoint", "method"])


def json_default(value: Any) -> Any:
    """ISO 8601 for dates and times (UTC shown as Z), str for UUIDs and the like."""
    if isinstance(value, datetime):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


class IsoJSONProvider(DefaultJSONProvider):
    sort_keys = False

    @staticmethod
    def default(o: Any) -> Any:
        return json_default(o)


class Problem(Exception):
    """An error answered as application/problem+json."""

    def __init__(self, status: int, title: str, detail: str = "", *, type_: str = "about:blank",
                 errors: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.type, self.errors, self.headers = type_, errors, headers or {}


def problem_response(status: int, title: str, detail: str = "", *, type_: str = "about:blank",
                     errors: Any = None, headers: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"type": type_, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if errors:
        body["errors"] = errors
    rid = logs.request_id.get()
    if rid:
        body["instance"] = f"urn:request:{rid}"
    resp = jsonify(body)
    resp.status_code = status
    resp.mimetype = PROBLEM_JSON
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def _field_paths(errors: Any, prefix: str = "") -> list[str]:
    if not isinstance(errors, dict):
        return [prefix] if prefix else []
    out: list[str] = []
    for key, value in errors.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        out.extend(_field_paths(value, path) if isinstance(value, dict) else [path])
    return out


def json_depth(body: bytes) -> int:
    """Deepest array/object nesting of a JSON text (strings skipped), without parsing it:
    Python's recursive decoders raise RecursionError (a 500) on a 64 KB ``[[[[...``."""
    depth = deepest = 0
    for token in _JSON_TOKEN.findall(body):
        if token in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest


def too_deep(body: bytes) -> bool:
    """``json_depth(body) > MAX_JSON_DEPTH``; a body with no more opening brackets than that
    (strings included) cannot nest deeper, so it is not scanned."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return False
    return json_depth(body) > MAX_JSON_DEPTH


def nul_fields(body: bool = True) -> list[str]:
    """Query parameters and JSON body fields holding a NUL character, which no text column
    can store (PostgreSQL refuses it); a byte scan first, so clean requests cost little."""
    found = [name for name, values in request.args.lists()
             if "\x00" in name or any("\x00" in v for v in values)]
    found += [name for name, v in (request.view_args or {}).items()
              if isinstance(v, str) and "\x00" in v]
    # (endpoints with their own body limit and parser, e.g. HSDS import, check their own)
    if body and request.method in ("POST", "PUT", "PATCH") and request.is_json:
        raw = request.get_data(cache=True)
        if b"\\u0000" in raw or b"\x00" in raw:
            found += _nul_paths(request.get_json(silent=True), "")
    return found


def _nul_paths(value: Any, path: str) -> list[str]:
    """Dotted paths of the strings (or keys) in ``value`` that hold a NUL."""
    if isinstance(value, str):
        return [path or "_"] if "\x00" in value else []
    items = value.items() if isinstance(value, dict) else (
        enumerate(value) if isinstance(value, list) else ())
    found: list[str] = []
    for key, child in items:
        where = f"{path}.{key}" if path else str(key)
        found += [where] if "\x00" in str(key) else _nul_paths(child, where)
    return found


def validation_problem(messages: Any) -> Response:
    if isinstance(messages, dict) and set(messages) <= {"json", "query", "headers", "form",
                                                        "files", "path", "view_args"}:
        flat: dict[str, Any] = {}
        for loc in messages.values():
            if isinstance(loc, dict):
                flat.update(loc)
        messages = flat
    fields = _field_paths(messages)
    detail = "Invalid or unknown fields: " + ", ".join(fields) if fields else "Invalid request"
    return problem_response(422, "Unprocessable Content", detail, type_="/problems/validation",
                            errors=messages if isinstance(messages, dict) else {"_": messages})


class StrictParser(FlaskParser):  # type: ignore[misc]
    """Unknown query parameters are rejected like unknown body fields (DESIGN §8): each
    location defers to the schema's own ``unknown`` setting (RAISE in our schemas)."""

    DEFAULT_UNKNOWN_BY_LOCATION = {**FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION, "query": None,
                                   "querystring": None}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._instances: dict[type[Schema], Schema] = {}

    def _get_schema(self, argmap: Any, req: Any) -> Schema:
        """One instance per schema class, built on first use: flask-smorest hands webargs
        the class, and webargs would build it (deep-copying every field, nested schemas
        included) on every request. Loading does not change a schema, so sharing is safe."""
        if isinstance(argmap, type) and issubclass(argmap, Schema):
            schema = self._instances.get(argmap)
            if schema is None:
                schema = self._instances.setdefault(argmap, argmap())
            return schema
        return super()._get_schema(argmap, req)  # type: ignore[no-any-return]


Blueprint.ARGUMENTS_PARSER = StrictParser()


class ProblemApi(Api):  # type: ignore[misc]
    """flask-smorest Api whose HTTP errors are problem+json."""

    def handle_http_exception(self, error: HTTPException) -> Response:
        data = getattr(error, "data", None) or {}
        if error.code == 422 and "messages" in data:
            return validation_problem(data["messages"])
        if error.code == 400 and "messages" in data:
            return problem_response(400, "Bad Request", "Malformed JSON body",
                                    type_="/problems/malformed-json")
        if error.code == 413:
            return problem_response(413, "Content Too Large",
                                    f"Request body exceeds {MAX_BODY_BYTES} bytes")
        code = error.code or 500
        detail = data.get("message") or (error.description if code < 500 else "")
        return problem_response(code, error.name, str(detail or ""),
                                headers=dict(data.get("headers", {})))


class ServiceFlask(Flask):
    """Flask, remembering which hooks and views are plain functions: Flask asks
    ``inspect.iscoroutinefunction`` of every hook and view on every request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync_functions: set[Any] = set()

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        if type(func) is FunctionType and func in self._sync_functions:
            return func
        wrapped = super().ensure_sync(func)
        # plain functions only (bound methods are made per call), and never without bound
        if wrapped is func and type(func) is FunctionType and len(self._sync_functions) < 10_000:
            self._sync_functions.add(func)
        return wrapped


def create_base_app(service: str, *, version: str = "1.0", readiness: list[Callable[[], None]]
                    | None = None, non_json_endpoints: tuple[str, ...] = (),
                    auth_failure_limit: int = 20, auth_failure_window_s: int = 60
                    ) -> tuple[Flask, Api]:
    app = ServiceFlask(service)
    app.json = IsoJSONProvider(app)
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        API_TITLE=service,
        API_VERSION=version,
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        JSON_SORT_KEYS=False,
    )
    api = ProblemApi(app, spec_kwargs={"components": {"securitySchemes": {
        "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}}})
    app.extensions["service_name"] = service
    app.extensions["problem_api"] = api
    app.extensions["non_json_endpoints"] = non_json_endpoints  # read by the security tests
    app.extensions["auth_limiter"] = AuthFailureLimiter(auth_failure_limit, auth_failure_window_s)
    _install_request_hooks(app, service, non_json_endpoints)
    _install_error_handlers(app)
    _install_ops_routes(app, readiness or [])
    return app, api


def _install_request_hooks(app: Flask, service: str, non_json: tuple[str, ...]) -> None:
    # metric children by label values (endpoints are url rules, so these stay small)
    counters: dict[tuple[str, str, int], Any] = {}
    timers: dict[tuple[str, str], Any] = {}

    @app.before_request
    def _start() -> Response | None:
        g.started = time.perf_counter()
        rid = request.headers.get("X-Request-ID", "")
        rid = rid if _SAFE_ID.match(rid) else str(uuid.uuid4())
        corr = request.headers.get("X-Correlation-ID", "")
        corr = corr if _SAFE_ID.match(corr) else rid
        g.log_tokens = (logs.request_id.set(rid), logs.correlation_id.set(corr))
        if request.path not in OPS_PATHS:
            wait = app.extensions["auth_limiter"].retry_after(request.remote_addr or "")
            if wait:
                RATE_LIMITED.labels(service).inc()
                return problem_response(429, "Too Many Requests",
                                        "Too many failed authentications; retry later",
                                        headers={"Retry-After": str(wait)})
        if request.method in ("POST", "PUT", "PATCH") and request.endpoint not in non_json:
            length = request.content_length
            if length is not None and length > MAX_BODY_BYTES:
                return problem_response(413, "Content Too Large",
                                        f"Request body exceeds {MAX_BODY_BYTES} bytes")
            has_body = bool(length) or request.headers.get("Transfer-Encoding") == "chunked"
            if has_body and not request.is_json:
                return problem_response(415, "Unsupported Media Type",
                                        "Content-Type must be application/json")
            if has_body and too_deep(request.get_data(cache=True)):
                return problem_response(400, "Bad Request",
                                        f"JSON nested deeper than {MAX_JSON_DEPTH} levels",
                                        type_="/problems/malformed-json")
        with_nul = nul_fields(body=request.endpoint not in non_json)
        if with_nul:
            return validation_problem({f: ["NUL characters are not allowed."] for f in with_nul})
        return None

    @app.after_request
    def _finish(resp: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        method, status = request.method, resp.status_code
        counter = counters.get((endpoint, method, status))
        if counter is None:  # labels() validates and locks: looked up once per label set
            counter = REQUESTS.labels(service, endpoint, method, str(status))
            if len(counters) < MAX_CACHED_LABEL_SETS:  # methods come from clients
                counters[(endpoint, method, status)] = counter
        timer = timers.get((endpoint, method))
        if timer is None:
            timer = LATENCY.labels(service, endpoint, method)
            if len(timers) < MAX_CACHED_LABEL_SETS:
                timers[(endpoint, method)] = timer
        counter.inc()
        timer.observe(elapsed)
        if resp.status_code == 401:
            app.extensions["auth_limiter"].record_failure(request.remote_addr or "")
        _set_headers(resp, logs.request_id.get() or "", logs.correlation_id.get() or "")
        if endpoint not in ("/metrics", "/healthz", "/readyz"):
            log.info("request", extra=logs.log_fields(
                method=request.method, endpoint=endpoint, status=resp.status_code,
                ms=round(elapsed * 1000, 1)))
        return resp

    @app.teardown_request
    def _reset(_exc: BaseException | None) -> None:
        tokens = g.pop("log_tokens", None)
        if tokens:
            logs.request_id.reset(tokens[0])
            logs.correlation_id.reset(tokens[1])


_SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
)


def _set_headers(resp: Response, request_id: str, correlation_id: str) -> None:
    """The ids, ``Cache-Control: no-store`` unless set, and the security headers, as
    ``resp.headers[name] = value`` would set them, with one pass over the headers already
    there instead of one per header (werkzeug scans and lowercases them all on each set)."""
    headers = resp.headers
    present = {name.lower() for name, _ in headers.items()}
    for name, value in (("X-Request-ID", request_id), ("X-Correlation-ID", correlation_id),
                        *_SECURITY_HEADERS):
        if name.lower() in present:
            headers[name] = value
        else:
            headers.add(name, value)
    if "cache-control" not in present:
        headers.add("Cache-Control", "no-store")


def _install_error_handlers(app: Flask) -> None:
    @app.errorhandler(Problem)
    def _problem(exc: Problem) -> Response:
        return problem_response(exc.status, exc.title, exc.detail, type_=exc.type,
                                errors=exc.errors, headers=exc.headers)

    @app.errorhandler(AuthError)
    def _auth(exc: AuthError) -> Response:
        title = "Unauthorized" if exc.status == 401 else "Forbidden"
        headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if exc.status == 401 else {}
        return problem_response(exc.status, title, exc.reason, headers=headers)

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError) -> Response:
        return validation_problem(exc.messages)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            return app.extensions["problem_api"].handle_http_exception(exc)
        if is_unavailable(exc):  # a restart or failover: retry (same Idempotency-Key) soon
            log.warning("database unavailable", exc_info=exc)
            return problem_response(503, "Service Unavailable",
                                    "The service's database is unavailable; retry shortly",
                                    headers={"Retry-After": "2"})
        log.error("unhandled error", exc_info=exc)
        return problem_response(500, "Internal Server Error", "An unexpected error occurred")


def _install_ops_routes(app: Flask, readiness: list[Callable[[], None]]) -> None:
    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @app.get("/readyz")
    def readyz() -> Response:
        failed = []
        for check in readiness:
            try:
                check()
            except Exception:  # noqa: BLE001 - reported, not raised
                failed.append(getattr(check, "__name__", "check"))
        if failed:
            return problem_response(503, "Service Unavailable",
                                    "Not ready: " + ", ".join(failed))
        return jsonify(status="ready")

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)
