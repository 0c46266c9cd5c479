"""Sign-in: demo users in the embedded default, OpenID Connect (code flow + PKCE) otherwise."""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any
from urllib.parse import urlencode

import jwt
import requests
from flask import (
    Blueprint,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response

from servicekit import demo
from servicekit.auth import AuthError, mint_dev_token

from ..security import HOME, current_user, safe_next

bp = Blueprint("auth", __name__)
ROLE_LABELS = {"officer": "Officer", "provider": "Provider staff",
               "supervisor": "Supervisor", "admin": "Administrator"}


def _config() -> Any:
    return current_app.extensions["console"]


def _start_session(token: str) -> Response:
    """A fresh session (new CSRF token: no fixation) holding only the access token."""
    nxt = session.get("next")
    session.clear()
    session["token"] = token
    return redirect(safe_next(nxt) or url_for("auth.home"), 303)


@bp.get("/")
def home() -> Response:
    user = current_user()
    if user is None:
        return redirect(url_for("auth.sign_in"), 303)
    return redirect(url_for(HOME[user.role]), 303)


@bp.get("/signin")
def sign_in() -> str:
    nxt = safe_next(request.args.get("next"))
    if nxt:
        session["next"] = nxt
    users = [{"index": i, "role": role, "label": ROLE_LABELS[role], "sub": sub}
             for i, (role, sub, _agency, _org) in enumerate(demo.DEMO_USERS)]
    config = _config()
    return render_template("signin.html", demo_users=users if config.demo_sign_in else [],
                           oidc=bool(config.oidc_issuer), expired=bool(nxt))


@bp.post("/signin/demo")
def demo_sign_in() -> Response:
    if not _config().demo_sign_in:
        abort(404)
    try:
        role, sub, agency, org = demo.DEMO_USERS[int(request.form.get("user", ""))]
    except (ValueError, IndexError):
        abort(400)
    token = mint_dev_token(_config().settings, sub=sub, role=role, agency=agency, org=org)
    return _start_session(token)


@bp.post("/signout")
def sign_out() -> Response:
    session.clear()
    return redirect(url_for("auth.sign_in", bye=1), 303)


# --- OpenID Connect ---------------------------------------------------------------------


def _discovery() -> dict[str, Any]:
    cache = current_app.extensions.setdefault("oidc_discovery", {})
    if not cache:
        url = _config().oidc_issuer + "/.well-known/openid-configuration"
        resp = requests.get(url, timeout=_config().api_timeout_s)
        resp.raise_for_status()
        cache.update(resp.json())
    return cache


def _redirect_uri() -> str:
    return _config().public_url + url_for("auth.oidc_callback")


@bp.get("/signin/oidc")
def oidc_start() -> Response:
    config = _config()
    if not config.oidc_issuer:
        abort(404)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    session.update(oidc_state=secrets.token_urlsafe(24), oidc_nonce=secrets.token_urlsafe(24),
                   oidc_verifier=verifier)
    query = urlencode({
        "response_type": "code", "client_id": config.oidc_client_id,
        "redirect_uri": _redirect_uri(), "scope": config.oidc_scopes,
        "state": session["oidc_state"], "nonce": session["oidc_nonce"],
        "code_challenge": challenge.rstrip(b"=").decode(), "code_challenge_method": "S256",
    })
    return redirect(f"{_discovery()['authorization_endpoint']}?{query}", 303)


@bp.get("/oidc/callback")
def oidc_callback() -> Response | str:
    config = _config()
    state = session.pop("oidc_state", "")
    if not config.oidc_issuer or not state or not hmac.compare_digest(
            state, request.args.get("state", "")):
        abort(400, description="sign-in state")
    if "code" not in request.args:
        return render_template("signin.html", demo_users=[], oidc=True,
                               error="The sign-in provider did not sign you in.")
    resp = requests.post(_discovery()["token_endpoint"], timeout=config.api_timeout_s, data={
        "grant_type": "authorization_code", "code": request.args["code"],
        "redirect_uri": _redirect_uri(), "client_id": config.oidc_client_id,
        "client_secret": config.oidc_client_secret,
        "code_verifier": session.pop("oidc_verifier", ""),
    })
    if not resp.ok:
        abort(400, description="token exchange")
    tokens = resp.json()
    _check_nonce(tokens.get("id_token"), session.pop("oidc_nonce", ""))
    token = tokens.get("access_token", "")
    try:
        current_app.extensions["verifier"].verify(token)
    except AuthError:
        abort(403)
    return _start_session(token)


def _check_nonce(id_token: str | None, nonce: str) -> None:
    """The id token came straight from the token endpoint over TLS (OIDC core 3.1.3.7:
    TLS validation may replace signature checks there); its nonce must be ours."""
    if not id_token:
        return
    claims = jwt.decode(id_token, options={"verify_signature": False})
    if not nonce or not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
        abort(400, description="sign-in nonce")
