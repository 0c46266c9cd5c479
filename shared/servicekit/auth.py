"""Access tokens (DESIGN.md section 8): JWT verification, roles, ownership, dev minting.

Only asymmetric signatures are accepted, so the services hold public keys only and a
leaked service config cannot mint tokens. The token header's ``alg`` is checked against
the allow-list before any verification (algorithm-confusion defence), and each configured
public key is tried, so signing keys can be rotated by listing old and new keys together.

Failures raise :class:`AuthError`; its ``reason`` is short and safe to return to the
client (never the token or its claims). The web module turns it into problem+json.
"""
from __future__ import annotations

import hashlib
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from flask import Flask, current_app, g, request

from servicekit.crypto import write_file_once
from servicekit.settings import Settings

ROLES = ("officer", "provider", "supervisor", "admin")
ASYMMETRIC_ALGORITHMS = frozenset({
    "EdDSA", "ES256", "ES256K", "ES384", "ES512", "ES521",
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
})
LEEWAY_SECONDS = 30
MAX_TOKEN_BYTES = 8192
VERIFIED_CACHE_SIZE = 4096  # verified tokens remembered per verifier (FIFO beyond that)
_REQUIRED_CLAIMS = ["exp", "iat", "sub", "role", "iss", "aud"]
_AGENCY_ROLES = ("officer", "supervisor")
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.DOTALL)
_EC_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1, "ES256K": ec.SECP256K1, "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1, "ES521": ec.SECP521R1,
}

PublicKey = (
    ed25519.Ed25519PublicKey | ed448.Ed448PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
)
P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the verified claims the services act on."""

    sub: str
    role: str
    agency: str | None = None
    org: str | None = None


class AuthError(Exception):
    """Authentication (status 401) or authorisation (status 403) failure."""

    def __init__(self, reason: str, status: int = 401) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


# --- keys -------------------------------------------------------------------------------


def load_public_keys(pem: bytes | str) -> list[PublicKey]:
    """Every public key in a PEM text (several may be concatenated; certificates too)."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    keys = [_load_block(m.group(0), m.group(1)) for m in _PEM_BLOCK.finditer(data)]
    if not keys:
        raise ValueError("no PEM public key found")
    return keys


def _load_block(block: bytes, label: bytes) -> PublicKey:
    if label == b"CERTIFICATE":
        key: Any = x509.load_pem_x509_certificate(block).public_key()
    elif label.endswith(b"PUBLIC KEY"):
        key = serialization.load_pem_public_key(block)
    else:
        raise ValueError("only public keys and certificates may be configured for JWT")
    if not isinstance(key, PublicKey):
        raise TypeError("unsupported public key type for JWT")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise ValueError("RSA public keys must have at least 2048 bits")
    return key


def _key_fits(key: PublicKey, algorithm: str) -> bool:
    if algorithm == "EdDSA":
        return isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))
    if algorithm in _EC_CURVES:
        curve = _EC_CURVES[algorithm]
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, curve)
    return isinstance(key, rsa.RSAPublicKey)  # RS* and PS*


# --- verification -----------------------------------------------------------------------


def _error_reason(exc: jwt.PyJWTError) -> tuple[str, int]:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token expired", 401
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token not yet valid", 401
    if isinstance(exc, jwt.InvalidAudienceError):
        return "wrong audience", 401
    if isinstance(exc, jwt.InvalidIssuerError):
        return "wrong issuer", 401
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing claim: {exc.claim}", 401
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "algorithm not allowed", 401
    if isinstance(exc, jwt.InvalidSignatureError):
        return "invalid signature", 401
    if isinstance(exc, jwt.DecodeError):
        return "malformed token", 401
    return "invalid token", 401


def _optional_str(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise AuthError(f"invalid claim: {name}")
    return value


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    """Check the role-specific claims of already verified token claims."""
    sub, role = claims.get("sub"), claims.get("role")
    if not isinstance(sub, str) or not sub:
        raise AuthError("invalid claim: sub")
    if role not in ROLES:
        raise AuthError("unknown role", 403)
    agency, org = _optional_str(claims, "agency"), _optional_str(claims, "org")
    if role in _AGENCY_ROLES and agency is None:
        raise AuthError("agency claim required for role", 403)
    if role == "provider" and org is None:
        raise AuthError("org claim required for role", 403)
    return Principal(sub=sub, role=str(role), agency=agency, org=org)


class TokenVerifier:
    """Verifies access tokens against public keys, issuer, audience and an allow-list."""

    def __init__(
        self,
        public_keys: Sequence[bytes | str],
        issuer: str,
        audience: str,
        algorithms: Iterable[str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        allowed = frozenset(algorithms)
        if not allowed:
            raise ValueError("at least one JWT algorithm must be allowed")
        if not allowed <= ASYMMETRIC_ALGORITHMS:
            raise ValueError("only asymmetric JWT algorithms may be allowed (no HS*, no none)")
        self._keys = [key for pem in public_keys for key in load_public_keys(pem)]
        if not self._keys:
            raise ValueError("at least one public key is required")
        self._issuer, self._audience, self._algorithms = issuer, audience, allowed
        # Verified tokens: sha256(token) -> (principal, iat, nbf, exp). Signature, header,
        # issuer, audience and claims of a token never change, and the keys of a verifier are
        # fixed, so only the time checks are repeated on a hit, exactly as pyjwt makes them.
        # Only successes are remembered: a bad token is verified (and answered 401, which the
        # auth-failure limiter counts) every time.
        self._clock = clock
        self._verified: dict[bytes, tuple[Principal, int, int | None, int]] = {}
        self._verified_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        """Build from JWT_* settings; creates the dev keypair if the key file is missing."""
        public_path = Path(settings.get("JWT_PUBLIC_KEY_FILE"))
        if not public_path.exists():
            if settings.get("DEV_KEYS") != "1":
                raise FileNotFoundError(f"JWT_PUBLIC_KEY_FILE {public_path} does not exist")
            ensure_dev_keypair(Path(settings.get("JWT_PRIVATE_KEY_FILE")), public_path)
        algorithms = [a.strip() for a in settings.get("JWT_ALGORITHMS").split(",") if a.strip()]
        return cls(
            [public_path.read_bytes()],
            issuer=settings.get("JWT_ISSUER"),
            audience=settings.get("JWT_AUDIENCE"),
            algorithms=algorithms,
        )

    def verify(self, token: str) -> Principal:
        """Return the principal of a valid token; raise :class:`AuthError` otherwise.

        A token verified before is not verified again while it is valid: its signature and
        claims cannot have changed, and its ``iat``/``nbf``/``exp`` are checked against the
        clock on every call with pyjwt's own comparisons and leeway (an expired token is
        refused as "token expired" from then on, cached or not).
        """
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest() \
            if token and len(token) <= MAX_TOKEN_BYTES else None
        if digest is not None:
            hit = self._verified.get(digest)
            if hit is not None:
                principal, iat, nbf, exp = hit
                now = self._clock()
                if exp <= now - LEEWAY_SECONDS:
                    with self._verified_lock:
                        self._verified.pop(digest, None)
                    raise AuthError("token expired")
                if iat <= now + LEEWAY_SECONDS and (nbf is None or nbf <= now + LEEWAY_SECONDS):
                    return principal
        algorithm = self._checked_algorithm(token)
        claims = self._decode(token, algorithm)
        principal = principal_from_claims(claims)
        if digest is not None:
            self._remember(digest, principal, claims)
        return principal

    def _remember(self, digest: bytes, principal: Principal, claims: dict[str, Any]) -> None:
        try:  # the integers pyjwt compared (it accepted these claims just now)
            entry = (principal, int(claims["iat"]),
                     None if claims.get("nbf") is None else int(claims["nbf"]),
                     int(claims["exp"]))
        except (TypeError, ValueError, OverflowError):
            return
        with self._verified_lock:
            while len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.pop(next(iter(self._verified)))  # the oldest entry
            self._verified[digest] = entry

    def _checked_algorithm(self, token: str) -> str:
        if not token:
            raise AuthError("missing token")
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed token") from None
        if "crit" in header:  # we implement no extensions, so must refuse (RFC 7515 4.1.11)
            raise AuthError("malformed token")
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self._algorithms:
            raise AuthError("algorithm not allowed")
        return algorithm

    def _decode(self, token: str, algorithm: str) -> dict[str, Any]:
        for key in (k for k in self._keys if _key_fits(k, algorithm)):
            try:
                return jwt.decode(
                    token, key, algorithms=[algorithm], audience=self._audience,
                    issuer=self._issuer, leeway=LEEWAY_SECONDS,
                    options={"require": list(_REQUIRED_CLAIMS)},
                )
            except jwt.InvalidSignatureError:
                continue  # signed by another key: try the next one
            except jwt.PyJWTError as exc:
                raise AuthError(*_error_reason(exc)) from None
        raise AuthError("invalid signature")


# --- dev keys and minting ---------------------------------------------------------------


def ensure_dev_keypair(private_path: Path, public_path: Path) -> None:
    """Create an Ed25519 dev keypair (PEM) unless it exists; race-safe across processes.

    The private key is written first (0600, first writer wins); the public key is then
    derived from whichever private key won, so racing processes agree on one pair.
    Refuses to invent a private key beside an existing public key it would not match.
    """
    if not private_path.exists():
        # our own writers create the private key before the public one, so a public key
        # seen before its private key was placed there by someone else
        if public_path.exists() and not private_path.exists():
            raise FileNotFoundError("JWT public key file exists but its private key does not")
        private = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_file_once(private_path, private, 0o600)
    if not public_path.exists():
        key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        write_file_once(public_path, public, 0o644)


def mint_token(
    private_key_pem: bytes | str,
    *,
    sub: str,
    role: str,
    agency: str | None = None,
    org: str | None = None,
    issuer: str,
    audience: str,
    ttl_seconds: int = 8 * 3600,
    algorithm: str = "EdDSA",
    extra: dict[str, Any] | None = None,
) -> str:
    """Sign an access token. ``extra`` claims are added first; the standard ones win."""
    if algorithm not in ASYMMETRIC_ALGORITHMS:
        raise ValueError("only asymmetric JWT algorithms may be used")
    key = serialization.load_pem_private_key(
        private_key_pem.encode("ascii") if isinstance(private_key_pem, str) else private_key_pem,
        password=None,
    )
    now = int(time.time())
    claims: dict[str, Any] = {
        **(extra or {}), "iss": issuer, "aud": audience, "sub": sub, "role": role,
        "iat": now, "exp": now + ttl_seconds, "jti": uuid.uuid4().hex,
    }
    claims.update({k: v for k, v in (("agency", agency), ("org", org)) if v is not None})
    return jwt.encode(claims, key, algorithm=algorithm)  # type: ignore[arg-type]


def mint_dev_token(
    settings: Settings,
    *,
    sub: str,
    role: str,
    agency: str | None = None,
    org: str | None = None,
    ttl_seconds: int = 8 * 3600,
) -> str:
    """Sign a token with the dev key (JWT_PRIVATE_KEY_FILE), creating the keypair if needed.

    Checks the claims as the verifier will, so a typo fails here rather than at the API.
    """
    try:
        principal_from_claims({"sub": sub, "role": role, "agency": agency, "org": org})
    except AuthError as exc:
        raise ValueError(exc.reason) from None
    private_path = Path(settings.get("JWT_PRIVATE_KEY_FILE"))
    ensure_dev_keypair(private_path, Path(settings.get("JWT_PUBLIC_KEY_FILE")))
    return mint_token(
        private_path.read_bytes(), sub=sub, role=role, agency=agency, org=org,
        issuer=settings.get("JWT_ISSUER"), audience=settings.get("JWT_AUDIENCE"),
        ttl_seconds=ttl_seconds,
    )


# --- Flask ------------------------------------------------------------------------------


def init_auth(app: Flask, verifier: TokenVerifier) -> None:
    """Attach the verifier to an app; :func:`current_principal` uses it."""
    app.extensions["auth"] = verifier


def _bearer_token() -> str:
    header = request.headers.get("Authorization", "")
    if not header.strip():
        raise AuthError("missing token")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError("unsupported authorization scheme")
    if not token.strip():
        raise AuthError("missing token")
    return token.strip()


def current_principal() -> Principal:
    """The verified caller of this request (parsed once, cached on ``flask.g``)."""
    cached = g.get("_auth_principal")
    if isinstance(cached, Principal):
        return cached
    try:
        verifier: TokenVerifier = current_app.extensions["auth"]
    except KeyError:
        raise RuntimeError("init_auth(app, verifier) was not called") from None
    principal = verifier.verify(_bearer_token())
    g._auth_principal = principal
    return principal


def requires(*roles: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: the caller must hold one of ``roles`` (403 "role not allowed")."""
    unknown = set(roles) - set(ROLES)
    if not roles or unknown:
        raise ValueError("requires() needs one or more known roles")

    def decorate(view: Callable[P, R]) -> Callable[P, R]:
        @wraps(view)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            if current_principal().role not in roles:
                raise AuthError("role not allowed", 403)
            return view(*args, **kwargs)

        # Read by the authorization-matrix test (functools.wraps copies it outwards, so
        # later decorators keep it): every endpoint's roles are checked, none forgotten.
        guarded.required_roles = tuple(roles)  # type: ignore[attr-defined]
        return guarded

    return decorate


def same_agency(principal: Principal, agency_id: str | None) -> bool:
    """True when the principal belongs to this (non-empty) agency."""
    return bool(agency_id) and principal.agency == agency_id


def same_org(principal: Principal, org_id: str | None) -> bool:
    """True when the principal belongs to this (non-empty) organisation."""
    return bool(org_id) and principal.org == org_id
