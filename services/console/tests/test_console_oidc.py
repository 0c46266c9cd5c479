"""OpenID Connect sign-in (authorization code + PKCE) against a small local issuer."""
from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from console_testkit import Served
from flask import Flask, request

from console.app import create_app
from console.config import load_config
from servicekit import demo
from servicekit.auth import mint_dev_token
from servicekit.settings import Settings


class Issuer:
    """Just enough of an OIDC provider: discovery and a token endpoint checking PKCE."""

    def __init__(self, settings: Settings) -> None:
        self.expected: dict[str, str] = {}
        app = Flask("issuer")

        @app.get("/.well-known/openid-configuration")
        def discovery() -> dict[str, str]:
            return {"issuer": self.url, "authorization_endpoint": self.url + "/authorize",
                    "token_endpoint": self.url + "/token"}

        @app.post("/token")
        def token() -> Any:
            form = request.form
            digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
            challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            if (form.get("grant_type") != "authorization_code" or form.get("code") != "c-1"
                    or challenge != self.expected.get("challenge")
                    or form.get("client_secret") != "s3cret"):
                return {"error": "invalid_grant"}, 400
            access = mint_dev_token(settings, sub="officer-oidc", role="officer",
                                    agency=demo.AGENCY)
            id_token = jwt.encode({"nonce": self.expected.get("nonce", "")}, "k" * 32)
            return {"access_token": access, "id_token": id_token, "token_type": "Bearer"}

        self.server = Served(app)
        self.url = self.server.url


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[tuple[Issuer, dict[str, str]]]:
    env = {"VAR_DIR": str(tmp_path / "var")}
    idp = Issuer(Settings.from_env("cli", env))
    yield idp, {**env, "CONSOLE_OIDC_ISSUER": idp.url, "CONSOLE_OIDC_CLIENT_ID": "console",
                "CONSOLE_OIDC_CLIENT_SECRET": "s3cret"}
    idp.server.close()


def _start(client: Any) -> dict[str, str]:
    resp = client.get("/signin/oidc")
    assert resp.status_code == 303
    query = {k: v[0] for k, v in parse_qs(urlsplit(resp.headers["Location"]).query).items()}
    assert query["code_challenge_method"] == "S256" and query["response_type"] == "code"
    assert query["redirect_uri"] == "http://127.0.0.1:8000/oidc/callback"
    return query


def test_code_flow_with_pkce_signs_the_user_in(issuer: tuple[Issuer, dict[str, str]]) -> None:
    idp, env = issuer
    client = create_app(load_config(env)).test_client()
    assert "Sign in with your organization" in client.get("/signin").text
    query = _start(client)
    idp.expected.update(challenge=query["code_challenge"], nonce=query["nonce"])
    done = client.get(f"/oidc/callback?code=c-1&state={query['state']}")
    assert done.status_code == 303
    assert client.get("/").headers["Location"] == "/referrals/new"


def test_a_forged_state_or_nonce_signs_nobody_in(issuer: tuple[Issuer, dict[str, str]]) -> None:
    idp, env = issuer
    client = create_app(load_config(env)).test_client()
    query = _start(client)
    idp.expected.update(challenge=query["code_challenge"], nonce=query["nonce"])
    assert client.get("/oidc/callback?code=c-1&state=forged").status_code == 400
    assert client.get("/").headers["Location"] == "/signin"
    query = _start(client)
    idp.expected.update(challenge=query["code_challenge"], nonce="someone-else")
    assert client.get(f"/oidc/callback?code=c-1&state={query['state']}").status_code == 400
    assert client.get("/").headers["Location"] == "/signin"


def test_without_dev_keys_there_is_no_demo_sign_in(issuer: tuple[Issuer, dict[str, str]]
                                                   ) -> None:
    _idp, env = issuer
    mint_dev_token(Settings.from_env("cli", env), sub="x", role="admin")  # creates the keys
    prod = {**env, "DEV_KEYS": "0", "CONSOLE_SECRET_KEY": "k" * 40}
    client = create_app(load_config(prod)).test_client()
    page = client.get("/signin").text
    assert "Demo users" not in page and "Sign in with your organization" in page
    with client.session_transaction() as session:
        session["csrf"] = "known"
    refused = client.post("/signin/demo", data={"user": "0", "csrf_token": "known"})
    assert refused.status_code == 404
    with pytest.raises(RuntimeError):
        load_config({**env, "DEV_KEYS": "0"})  # no session key configured
