"""Sign-in state, role checks, CSRF and the security headers of every page.

The session is Flask's signed cookie (HttpOnly, SameSite=Lax, Secure over TLS). It holds
the user's access token and a CSRF token, never personal data. The token is verified on
every request with the same keys the services use, so an expired token sends the user
back to sign-in (the officer's typed form survives in the tab, see static/app.js).
"""
from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Flask, Response, abort, current_app, g, redirect, request, session, url_for

from servicekit.auth import AuthError, TokenVerifier

from .client import ApiClient

F = TypeVar("F", bound=Callable[..., Any])
UNSAFE = ("POST", "PUT", "PATCH", "DELETE")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "frame-ancestors 'none'; form-action 'self'")
HOME = {"officer": "officer.new_referral", "provider": "provider.inbox",
        "supervisor": "supervisor.dashboard", "admin": "admin.home"}


@dataclass(frozen=True)
class User:
    sub: str
    role: str
    agency: str | None
    org: str | None
    token: str


def current_user() -> User | None:
    """The signed-in user of this request, or None (no token, or it expired)."""
    if "user" in g:
        return g.user  # type: ignore[no-any-return]
    token = session.get("token")
    user = None
    if token:
        verifier: TokenVerifier = current_app.extensions["verifier"]
        try:
            p = verifier.verify(token)
            user = User(p.sub, p.role, p.agency, p.org, token)
        except AuthError:
            session.pop("token", None)
    g.user = user
    return user


def api() -> ApiClient:
    user = current_user()
    config = current_app.extensions["console"]
    return ApiClient(config.urls, user.token if user else None, config.api_timeout_s,
                     current_app.extensions["http"])


def safe_next(target: str | None) -> str | None:
    """Only a local path (no scheme, host or protocol-relative URL) may be a redirect."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return None
    parts = urlsplit(target)
    return None if parts.scheme or parts.netloc or "\\" in target else target


def to_sign_in() -> Response:
    """Back to sign-in, then to the page the user was on (a path only: no personal data)."""
    back = request.path if request.method == "GET" else _referrer_path()
    target = url_for("auth.sign_in", next=safe_next(back) or None)
    if request.headers.get("HX-Request"):
        resp = Response(status=401)
        resp.headers["HX-Redirect"] = target
        return resp
    return redirect(target, 303)  # type: ignore[return-value]


def _referrer_path() -> str | None:
    ref = request.headers.get("Referer", "")
    parts = urlsplit(ref)
    if parts.netloc and parts.netloc != request.host:
        return None
    return parts.path or None


def roles(*allowed: str) -> Callable[[F], F]:
    """The view needs a signed-in user holding one of ``allowed``."""

    def decorate(view: F) -> F:
        @wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            user = current_user()
            if user is None:
                return to_sign_in()
            if user.role not in allowed:
                abort(403)
            return view(*args, **kwargs)

        return guarded  # type: ignore[return-value]

    return decorate


def csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return str(token)


def _check_csrf() -> None:
    if request.method not in UNSAFE:
        return
    sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token", "")
    expected = session.get("csrf", "")
    if not expected or not hmac.compare_digest(str(sent), str(expected)):
        abort(400, description="csrf")


def _headers(resp: Response) -> Response:
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "same-origin"
    resp.headers["Permissions-Policy"] = "geolocation=(self), camera=(), microphone=()"
    if not request.path.startswith("/static/"):
        resp.headers["Cache-Control"] = "no-store"  # pages may show personal data
    return resp


def init_security(app: Flask, secure_cookies: bool) -> None:
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_SECURE=secure_cookies, SESSION_COOKIE_NAME="console",
                      MAX_CONTENT_LENGTH=1024 * 1024)  # imports raise their own limit
    app.before_request(_check_csrf)
    app.after_request(_headers)
    app.jinja_env.globals.update(csrf_token=csrf_token, current_user=current_user)
