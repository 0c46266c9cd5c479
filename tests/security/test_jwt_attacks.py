"""Forged, stale and malformed access tokens against every protected endpoint of every
service: each is a 401 problem+json with a WWW-Authenticate challenge, and a valid token
on the same request is not (so the test would notice an endpoint that ignores tokens)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from servicekit.auth import mint_token

from .conftest import ROLE_CLAIMS, Services
from .endpoints import Endpoint, endpoints

pytestmark = pytest.mark.security


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, object], claims: dict[str, object]) -> str:
    return _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())


def _claims(services: Services, role: str) -> dict[str, object]:
    now = int(time.time())
    s = services.settings
    return {"iss": s.get("JWT_ISSUER"), "aud": s.get("JWT_AUDIENCE"), "role": role,
            "iat": now, "exp": now + 600, **ROLE_CLAIMS[role]}


def _sign(services: Services, role: str, **kw: object) -> str:
    s = services.settings
    private = Path(s.get("JWT_PRIVATE_KEY_FILE")).read_bytes()
    claims = {k: v for k, v in ROLE_CLAIMS[role].items()}
    return mint_token(private, role=role, issuer=str(kw.pop("issuer", s.get("JWT_ISSUER"))),
                      audience=str(kw.pop("audience", s.get("JWT_AUDIENCE"))),
                      **claims, **kw)  # type: ignore[arg-type]


def _tamper_payload(token: str, role: str) -> str:
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "admin" if role != "admin" else "officer"
    claims["sub"] = "someone-else"
    return ".".join([head, _b64(json.dumps(claims).encode()), sig])


def _tamper_signature(token: str) -> str:
    head, payload, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[0] ^= 0x01
    return ".".join([head, payload, _b64(bytes(raw))])


def attacks(services: Services, role: str) -> dict[str, str]:
    """name -> the Authorization header value of one attack."""
    public_pem = Path(services.settings.get("JWT_PUBLIC_KEY_FILE")).read_bytes()
    claims = _claims(services, role)
    confusion = _unsigned({"alg": "HS256", "typ": "JWT"}, claims)
    mac = hmac.new(public_pem, confusion.encode(), hashlib.sha256).digest()
    other_key = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    other_ec = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    s = services.settings
    good = _sign(services, role)
    now = int(time.time())
    return {
        "alg none": "Bearer " + _unsigned({"alg": "none", "typ": "JWT"}, claims) + ".",
        "alg None, no signature part": "Bearer " + _unsigned({"alg": "None"}, claims),
        "HS256 keyed with the public key": "Bearer " + confusion + "." + _b64(mac),
        "wrong issuer": "Bearer " + _sign(services, role, issuer="https://evil.example"),
        "wrong audience": "Bearer " + _sign(services, role, audience="another-api"),
        "expired": "Bearer " + _sign(services, role, ttl_seconds=-3600),
        "not yet valid": "Bearer " + _sign(services, role, extra={"nbf": now + 3600}),
        "tampered payload": "Bearer " + _tamper_payload(good, role),
        "tampered signature": "Bearer " + _tamper_signature(good),
        "signed by an unknown Ed25519 key": "Bearer " + mint_token(
            other_key, role=role, issuer=s.get("JWT_ISSUER"), audience=s.get("JWT_AUDIENCE"),
            **ROLE_CLAIMS[role]),  # type: ignore[arg-type]
        "ES256 by an unknown key": "Bearer " + mint_token(
            other_ec, role=role, issuer=s.get("JWT_ISSUER"), audience=s.get("JWT_AUDIENCE"),
            algorithm="ES256", **ROLE_CLAIMS[role]),  # type: ignore[arg-type]
        "unknown critical header": "Bearer " + _crit(good),
        "garbage token": "Bearer not.a.jwt",
        "random bytes": "Bearer " + _b64(bytes(range(200))),
        "empty bearer": "Bearer ",
        "basic scheme": "Basic " + base64.b64encode(b"admin:admin").decode(),
        "token only, no scheme": good,
        "oversized token": "Bearer " + "a" * 9000,
    }


def _crit(token: str) -> str:
    """A validly signed token is not needed: an unknown critical header must be refused
    before any signature work, so the header alone is swapped."""
    _head, payload, sig = token.split(".")
    return ".".join([_b64(json.dumps({"alg": "EdDSA", "crit": ["x-ext"], "x-ext": 1}).encode()),
                     payload, sig])


def _protected(services: Services) -> list[Endpoint]:
    found = [e for name, app in services.apps.items() for e in endpoints(name, app)
             if e.roles]
    assert {e.service for e in found} == set(services.apps), "a service with no protected api?"
    return found


def _call(services: Services, e: Endpoint, headers: dict[str, str]) -> object:
    client = services.client(e.service)
    kw: dict[str, object] = {"headers": headers}
    if e.method in ("POST", "PUT", "PATCH"):
        kw["json"] = {}
    return client.open(e.path(), method=e.method, **kw)


def test_every_jwt_attack_is_401_problem_json_on_every_protected_endpoint(
        services: Services) -> None:
    failures: list[str] = []
    checked = 0
    for e in _protected(services):
        role = e.roles[0]  # type: ignore[index]
        control = _call(services, e, {"Authorization": "Bearer " + _sign(services, role)})
        assert control.status_code not in (401, 403), (str(e), control.get_data(as_text=True))
        for name, header in [*attacks(services, role).items(), ("no header", None)]:
            resp = _call(services, e, {"Authorization": header} if header is not None else {})
            checked += 1
            body = resp.get_json(silent=True) or {}
            ok = (resp.status_code == 401 and resp.mimetype == "application/problem+json"
                  and body.get("status") == 401 and "Bearer" in resp.headers.get(
                      "WWW-Authenticate", "Bearer-missing") and "eyJ" not in resp.get_data(
                      as_text=True))
            if not ok:
                failures.append(f"{e} / {name}: {resp.status_code} {resp.get_data()[:200]!r}")
    assert not failures, "\n".join(failures)
    assert checked >= 19 * 10


@pytest.mark.parametrize("mutate", [
    pytest.param(lambda c: c.pop("exp"), id="no exp"),
    pytest.param(lambda c: c.pop("iss"), id="no iss"),
    pytest.param(lambda c: c.pop("aud"), id="no aud"),
    pytest.param(lambda c: c.pop("sub"), id="no sub"),
])
def test_tokens_missing_a_required_claim_are_refused(
        services: Services, mutate: Callable[[dict[str, object]], object]) -> None:
    import jwt

    private = serialization.load_pem_private_key(
        Path(services.settings.get("JWT_PRIVATE_KEY_FILE")).read_bytes(), password=None)
    claims = _claims(services, "admin")
    mutate(claims)
    token = jwt.encode(claims, private, algorithm="EdDSA")  # type: ignore[arg-type]
    resp = services.client("provider-registry").get(
        "/v1/services", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401 and resp.mimetype == "application/problem+json"
