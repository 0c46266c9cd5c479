"""Access tokens: only asymmetric, allow-listed, well-formed tokens for known roles pass."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import threading
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from flask import Flask, jsonify

from servicekit.auth import (
    ROLES,
    AuthError,
    Principal,
    TokenVerifier,
    current_principal,
    ensure_dev_keypair,
    init_auth,
    mint_dev_token,
    mint_token,
    requires,
    same_agency,
    same_org,
)
from servicekit.settings import Settings

ISS, AUD = "test-issuer", "test-audience"


def _pem_pair(private: Any) -> tuple[bytes, bytes]:
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    return _pem_pair(ed25519.Ed25519PrivateKey.generate())


@pytest.fixture
def verifier(keys: tuple[bytes, bytes]) -> TokenVerifier:
    return TokenVerifier([keys[1]], issuer=ISS, audience=AUD, algorithms=["EdDSA", "ES256"])


def _mint(private_pem: bytes, **overrides: Any) -> str:
    claims: dict[str, Any] = {"sub": "u-1", "role": "officer", "agency": "a-1",
                              "issuer": ISS, "audience": AUD}
    claims.update(overrides)
    return mint_token(private_pem, **claims)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": ISS, "aud": AUD, "sub": "u-1", "role": "officer", "agency": "a-1",
              "iat": now, "exp": now + 600}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _signed(private_pem: bytes, claims: dict[str, Any], **headers: Any) -> str:
    key = serialization.load_pem_private_key(private_pem, password=None)
    return jwt.encode(claims, key, algorithm="EdDSA", headers=headers or None)  # type: ignore[arg-type]


def _reason(verifier: TokenVerifier, token: str) -> tuple[str, int]:
    with pytest.raises(AuthError) as caught:
        verifier.verify(token)
    assert not token or token not in str(caught.value)
    return caught.value.reason, caught.value.status


def test_valid_token_is_accepted(keys: tuple[bytes, bytes], verifier: TokenVerifier) -> None:
    principal = verifier.verify(_mint(keys[0]))
    assert principal == Principal(sub="u-1", role="officer", agency="a-1", org=None)


def test_provider_and_admin_tokens_carry_their_claims(
    keys: tuple[bytes, bytes], verifier: TokenVerifier
) -> None:
    provider = verifier.verify(_mint(keys[0], role="provider", agency=None, org="o-1"))
    admin = verifier.verify(_mint(keys[0], role="admin", agency=None))
    assert (provider.role, provider.org, provider.agency) == ("provider", "o-1", None)
    assert (admin.role, admin.org, admin.agency) == ("admin", None, None)


def test_alg_none_is_rejected(verifier: TokenVerifier) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    token = f"{header}.{_b64(json.dumps(_claims(role='admin')).encode())}."
    assert _reason(verifier, token) == ("algorithm not allowed", 401)


def test_hs256_signed_with_the_public_key_is_rejected(
    keys: tuple[bytes, bytes], verifier: TokenVerifier
) -> None:
    signing_input = (
        f"{_b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}."
        f"{_b64(json.dumps(_claims(role='admin')).encode())}"
    )
    signature = hmac.new(keys[1], signing_input.encode(), hashlib.sha256).digest()
    assert _reason(verifier, f"{signing_input}.{_b64(signature)}") == ("algorithm not allowed", 401)


def test_token_signed_by_another_key_is_rejected(verifier: TokenVerifier) -> None:
    stranger, _ = _pem_pair(ed25519.Ed25519PrivateKey.generate())
    assert _reason(verifier, _mint(stranger)) == ("invalid signature", 401)


def test_allowed_algorithm_without_a_matching_key_is_rejected(verifier: TokenVerifier) -> None:
    ec_private, _ = _pem_pair(ec.generate_private_key(ec.SECP256R1()))
    assert _reason(verifier, _mint(ec_private, algorithm="ES256")) == ("invalid signature", 401)


def test_algorithm_outside_the_allow_list_is_rejected(keys: tuple[bytes, bytes]) -> None:
    ec_private, ec_public = _pem_pair(ec.generate_private_key(ec.SECP256R1()))
    only_eddsa = TokenVerifier([keys[1], ec_public], issuer=ISS, audience=AUD,
                               algorithms=["EdDSA"])
    assert _reason(only_eddsa, _mint(ec_private, algorithm="ES256"))[0] == "algorithm not allowed"


def test_every_configured_key_is_tried(keys: tuple[bytes, bytes]) -> None:
    new_private, new_public = _pem_pair(ed25519.Ed25519PrivateKey.generate())
    both = TokenVerifier([new_public + keys[1]], issuer=ISS, audience=AUD, algorithms=["EdDSA"])
    assert both.verify(_mint(keys[0])).sub == "u-1"
    assert both.verify(_mint(new_private)).sub == "u-1"


def test_expired_token_is_rejected(keys: tuple[bytes, bytes], verifier: TokenVerifier) -> None:
    assert _reason(verifier, _mint(keys[0], ttl_seconds=-120)) == ("token expired", 401)


def test_small_clock_skew_is_tolerated(keys: tuple[bytes, bytes], verifier: TokenVerifier) -> None:
    assert verifier.verify(_mint(keys[0], ttl_seconds=-5)).sub == "u-1"


def test_token_not_valid_before_a_future_nbf_is_rejected(
    keys: tuple[bytes, bytes], verifier: TokenVerifier
) -> None:
    token = _mint(keys[0], extra={"nbf": int(time.time()) + 600})
    assert _reason(verifier, token) == ("token not yet valid", 401)


def test_wrong_audience_is_rejected(keys: tuple[bytes, bytes], verifier: TokenVerifier) -> None:
    assert _reason(verifier, _mint(keys[0], audience="other")) == ("wrong audience", 401)


def test_wrong_issuer_is_rejected(keys: tuple[bytes, bytes], verifier: TokenVerifier) -> None:
    assert _reason(verifier, _mint(keys[0], issuer="evil")) == ("wrong issuer", 401)


def test_tampered_payload_is_rejected(keys: tuple[bytes, bytes], verifier: TokenVerifier) -> None:
    header, _, signature = _mint(keys[0]).split(".")
    forged = _b64(json.dumps(_claims(role="admin")).encode())
    assert _reason(verifier, f"{header}.{forged}.{signature}") == ("invalid signature", 401)


@pytest.mark.parametrize("claim", ["exp", "iat", "sub", "role"])
def test_missing_required_claim_is_rejected(
    keys: tuple[bytes, bytes], verifier: TokenVerifier, claim: str
) -> None:
    token = _signed(keys[0], _claims(**{claim: None}))
    assert _reason(verifier, token) == (f"missing claim: {claim}", 401)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"role": "superuser"}, "unknown role"),
        ({"role": "officer", "agency": None}, "agency claim required for role"),
        ({"role": "supervisor", "agency": None}, "agency claim required for role"),
        ({"role": "provider", "agency": None}, "org claim required for role"),
    ],
)
def test_role_claims_are_checked(
    keys: tuple[bytes, bytes], verifier: TokenVerifier, overrides: dict[str, Any], reason: str
) -> None:
    assert _reason(verifier, _signed(keys[0], _claims(**overrides))) == (reason, 403)


@pytest.mark.parametrize(
    ("token", "reason"),
    [("", "missing token"), ("abc", "malformed token"), ("a.b.c", "malformed token"),
     ("x" * 10_000, "malformed token")],
)
def test_malformed_tokens_are_rejected(verifier: TokenVerifier, token: str, reason: str) -> None:
    assert _reason(verifier, token) == (reason, 401)


def test_token_with_unknown_critical_header_is_rejected(
    keys: tuple[bytes, bytes], verifier: TokenVerifier
) -> None:
    token = _signed(keys[0], _claims(), crit=["exp"])
    assert _reason(verifier, token) == ("malformed token", 401)


@pytest.mark.parametrize("algorithms", [["EdDSA", "HS256"], ["none"], ["HS512"], [], ["XYZ"]])
def test_verifier_refuses_symmetric_or_unknown_algorithms(
    keys: tuple[bytes, bytes], algorithms: list[str]
) -> None:
    with pytest.raises(ValueError):
        TokenVerifier([keys[1]], issuer=ISS, audience=AUD, algorithms=algorithms)


def test_verifier_refuses_a_private_key_as_public_key(keys: tuple[bytes, bytes]) -> None:
    with pytest.raises(ValueError):
        TokenVerifier([keys[0]], issuer=ISS, audience=AUD, algorithms=["EdDSA"])


def test_concurrent_ensure_dev_keypair_yields_one_keypair(tmp_path: Path) -> None:
    private, public = tmp_path / "keys" / "dev.pem", tmp_path / "keys" / "dev.pub.pem"
    barrier, errors = threading.Barrier(8), []

    def create() -> None:
        barrier.wait()
        try:
            ensure_dev_keypair(private, public)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(p.name for p in private.parent.iterdir()) == ["dev.pem", "dev.pub.pem"]
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert _pem_pair(serialization.load_pem_private_key(private.read_bytes(), None))[1] == (
        public.read_bytes()
    )


def test_ensure_dev_keypair_never_pairs_a_new_private_key_with_a_foreign_public_key(
    tmp_path: Path, keys: tuple[bytes, bytes]
) -> None:
    (tmp_path / "pub.pem").write_bytes(keys[1])
    with pytest.raises(FileNotFoundError):
        ensure_dev_keypair(tmp_path / "priv.pem", tmp_path / "pub.pem")
    assert not (tmp_path / "priv.pem").exists()


def test_dev_tokens_verify_with_a_verifier_from_settings(tmp_path: Path) -> None:
    settings = Settings.from_env("cli", {"VAR_DIR": str(tmp_path)})
    verifier = TokenVerifier.from_settings(settings)  # creates the dev keypair
    token = mint_dev_token(settings, sub="p-1", role="provider", org="o-9")
    assert verifier.verify(token) == Principal(sub="p-1", role="provider", org="o-9")
    assert (tmp_path / "keys" / "dev-jwt-private.pem").exists()


def test_mint_dev_token_refuses_claims_the_verifier_would_reject(tmp_path: Path) -> None:
    settings = Settings.from_env("cli", {"VAR_DIR": str(tmp_path)})
    with pytest.raises(ValueError):
        mint_dev_token(settings, sub="u", role="root")
    with pytest.raises(ValueError):
        mint_dev_token(settings, sub="u", role="officer")  # no agency


# --- Flask --------------------------------------------------------------------------------


class CountingVerifier(TokenVerifier):
    calls = 0

    def verify(self, token: str) -> Principal:
        CountingVerifier.calls += 1
        return super().verify(token)


@pytest.fixture
def client(keys: tuple[bytes, bytes]) -> Any:
    app = Flask("test")
    init_auth(app, CountingVerifier([keys[1]], issuer=ISS, audience=AUD, algorithms=["EdDSA"]))

    @app.errorhandler(AuthError)
    def _auth_error(exc: AuthError) -> Any:
        return jsonify(reason=exc.reason), exc.status

    @app.get("/referrals")
    @requires("officer", "supervisor")
    def referrals() -> Any:
        first, second = current_principal(), current_principal()
        assert first is second
        return jsonify(sub=first.sub, agency=first.agency)

    return app.test_client()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_requires_lets_an_allowed_role_through_and_parses_once(
    client: Any, keys: tuple[bytes, bytes]
) -> None:
    CountingVerifier.calls = 0
    response = client.get("/referrals", headers=_bearer(_mint(keys[0])))
    assert response.status_code == 200
    assert response.json == {"sub": "u-1", "agency": "a-1"}
    assert CountingVerifier.calls == 1


def test_requires_refuses_other_roles_with_403(client: Any, keys: tuple[bytes, bytes]) -> None:
    token = _mint(keys[0], role="provider", agency=None, org="o-1")
    response = client.get("/referrals", headers=_bearer(token))
    assert (response.status_code, response.json) == (403, {"reason": "role not allowed"})


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing token"),
        ({"Authorization": "Bearer "}, "missing token"),
        ({"Authorization": "Basic dTpw"}, "unsupported authorization scheme"),
        ({"Authorization": "Bearer not.a.token"}, "malformed token"),
    ],
)
def test_requests_without_a_valid_bearer_token_get_401(
    client: Any, headers: dict[str, str], reason: str
) -> None:
    response = client.get("/referrals", headers=headers)
    assert (response.status_code, response.json) == (401, {"reason": reason})


def test_requires_rejects_unknown_roles_at_decoration_time() -> None:
    with pytest.raises(ValueError):
        requires("officer", "root")


def test_ownership_helpers() -> None:
    officer = Principal(sub="u", role="officer", agency="a-1")
    provider = Principal(sub="p", role="provider", org="o-1")
    assert same_agency(officer, "a-1") and not same_agency(officer, "a-2")
    assert not same_agency(provider, None) and not same_agency(officer, "")
    assert same_org(provider, "o-1") and not same_org(provider, "o-2")
    assert not same_org(officer, "o-1")
    assert set(ROLES) == {"officer", "provider", "supervisor", "admin"}
