"""Calls to the four services' HTTP APIs with the signed-in user's token.

Every failure becomes an :class:`ApiError` carrying the service's problem+json, so views
can show validation messages next to the right field. An endpoint a service does not
offer (yet) is an :class:`Unavailable`: the page says so instead of inventing data.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

_ROUTE_MISSING = "requested URL was not found"


def http_session() -> requests.Session:
    """The console's pooled HTTP session to the apis. An idempotent call (GET, PUT, DELETE,
    HEAD...; urllib3's default set, never POST) that fails before any answer comes is sent
    once more: a pooled keep-alive connection the api closes as idle (gunicorn keeps one 2 s)
    just as a request goes out fails that request, and the page said the service "did not
    answer" while it was up."""
    session = requests.Session()
    retry = Retry(total=1, connect=1, read=1, status=0, other=0, redirect=0,
                  backoff_factor=0, raise_on_status=False)
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


@dataclass
class ApiError(Exception):
    """A non-2xx answer (or no answer) from a service."""

    status: int
    title: str
    detail: str = ""
    errors: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.detail or self.title


class Unavailable(ApiError):
    """The service has no such endpoint (404 for the route itself, or 405)."""


class SessionExpired(ApiError):
    """The service rejected the token as expired or invalid: sign in again."""


def _error(resp: requests.Response) -> ApiError:
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    detail, title = str(body.get("detail") or ""), str(body.get("title") or resp.reason or "")
    errors = body.get("errors") if isinstance(body.get("errors"), dict) else {}
    if resp.status_code == 405 or (resp.status_code == 404 and _ROUTE_MISSING in detail):
        return Unavailable(resp.status_code, title, detail)
    if resp.status_code == 401:
        return SessionExpired(401, title, detail)
    return ApiError(resp.status_code, title, detail, errors or {})


class ApiClient:
    """One user's view of the services (base URLs by service name)."""

    def __init__(self, urls: dict[str, str], token: str | None, timeout_s: float,
                 http: requests.Session | None = None) -> None:
        self._urls, self._token, self._timeout = urls, token, timeout_s
        self._http = http or http_session()

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        headers.update(extra or {})
        return headers

    def call(self, service: str, method: str, path: str, *, json: Any = None,
             params: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
             data: bytes | None = None) -> Any:
        """The decoded JSON body (None for 204); raises ApiError otherwise."""
        try:
            resp = self._http.request(method, self._urls[service] + path, json=json,
                                      params=params, data=data, timeout=self._timeout,
                                      headers=self._headers(headers))
        except requests.RequestException:
            raise ApiError(503, "Service unreachable",
                           f"The {service} service did not answer. Try again shortly.") from None
        if resp.status_code >= 400:
            raise _error(resp)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    def get(self, service: str, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return self.call(service, "GET", path, params=clean or None)

    def post(self, service: str, path: str, body: Any = None, *,
             idempotency_key: str | None = None) -> Any:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self.call(service, "POST", path, json=body, headers=headers)

    def put(self, service: str, path: str, body: Any) -> Any:
        return self.call(service, "PUT", path, json=body)

    def stream(self, service: str, path: str, headers: dict[str, str] | None = None
               ) -> Iterator[bytes]:
        """Relay a server-sent-event stream chunk by chunk (no read timeout: it is long-lived)."""
        try:
            resp = self._http.get(self._urls[service] + path, stream=True,
                                  headers=self._headers({"Accept": "text/event-stream",
                                                         **(headers or {})}),
                                  timeout=(self._timeout, None))
        except requests.RequestException:
            raise ApiError(503, "Service unreachable") from None
        if resp.status_code >= 400:
            resp.close()
            raise _error(resp)
        with resp:
            yield from resp.iter_content(chunk_size=None)
