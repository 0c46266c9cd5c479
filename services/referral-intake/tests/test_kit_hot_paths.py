"""The service kit's per-request shortcuts that referral-intake's POST path relies on (they
live in shared/servicekit and serve every api): the verified-token cache, one argument
schema per class, the JSON depth precheck, the response headers in one pass, the metric
children, the log scrubber's precheck and the field sealer. Each is held to the behaviour
of the code it shortcuts."""
from __future__ import annotations

import json
import random
import re
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from flask import Response
from marshmallow import Schema, fields
from prometheus_client import REGISTRY

from servicekit import auth, crypto, logs, web
from servicekit.auth import AuthError, Principal, TokenVerifier, init_auth, mint_token, requires

ISS, AUD = "iss-test", "aud-test"


@pytest.fixture(scope="module")
def keypair() -> tuple[bytes, bytes]:
    private = ed25519.Ed25519PrivateKey.generate()
    return (private.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
            private.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))


class Clock:
    """Real time until ``now`` is set."""

    def __init__(self) -> None:
        self.now: float | None = None

    def __call__(self) -> float:
        return time.time() if self.now is None else self.now


def _verifier(keypair: tuple[bytes, bytes], clock: Any = time.time) -> TokenVerifier:
    return TokenVerifier([keypair[1]], issuer=ISS, audience=AUD, algorithms=["EdDSA"],
                         clock=clock)


def _token(keypair: tuple[bytes, bytes], **kw: Any) -> str:
    kw.setdefault("sub", "u-1")
    kw.setdefault("role", "officer")
    kw.setdefault("agency", "pd")
    return mint_token(keypair[0], issuer=ISS, audience=AUD, **kw)


# --- verified-token cache ---------------------------------------------------------------

def test_a_cached_token_expires_exactly_when_pyjwt_would_refuse_it(
        keypair: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    verifier = _verifier(keypair, clock)
    token = _token(keypair, ttl_seconds=60)
    exp = int(json.loads(auth.jwt.api_jws.base64url_decode(token.split(".")[1]))["exp"])
    assert verifier.verify(token).sub == "u-1"
    decode_calls = []
    monkeypatch.setattr(auth.jwt, "decode", lambda *a, **k: decode_calls.append(1))
    # pyjwt: expired when exp <= now - leeway
    clock.now = exp + auth.LEEWAY_SECONDS - 0.001
    assert verifier.verify(token).sub == "u-1"  # still valid: from the cache
    clock.now = exp + auth.LEEWAY_SECONDS
    with pytest.raises(AuthError, match="token expired") as caught:
        verifier.verify(token)
    assert caught.value.status == 401 and decode_calls == []


def test_a_cached_token_expires_in_real_time(keypair: tuple[bytes, bytes]) -> None:
    verifier = _verifier(keypair)
    # valid for about one more second, thanks only to the leeway
    token = _token(keypair, ttl_seconds=-auth.LEEWAY_SECONDS + 1)
    assert verifier.verify(token).sub == "u-1"
    assert verifier.verify(token).sub == "u-1"
    time.sleep(1.2)
    for _ in range(2):  # the cached entry, then pyjwt itself
        with pytest.raises(AuthError, match="token expired"):
            verifier.verify(token)


def test_only_valid_tokens_are_remembered_and_each_keeps_its_principal(
        keypair: tuple[bytes, bytes]) -> None:
    verifier = _verifier(keypair)
    stranger = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    forged = mint_token(stranger, sub="u-1", role="admin", issuer=ISS, audience=AUD)
    for _ in range(3):
        with pytest.raises(AuthError, match="invalid signature"):
            verifier.verify(forged)
    no_agency = _token(keypair, agency=None)
    for _ in range(2):
        with pytest.raises(AuthError) as caught:
            verifier.verify(no_agency)
        assert caught.value.status == 403
    a, b = _token(keypair, sub="a"), _token(keypair, sub="b", role="supervisor")
    assert verifier.verify(a) == Principal(sub="a", role="officer", agency="pd")
    assert verifier.verify(b) == Principal(sub="b", role="supervisor", agency="pd")
    assert verifier.verify(a).sub == "a" and verifier.verify(b).sub == "b"
    assert len(verifier._verified) == 2


def test_the_cache_is_bounded(keypair: tuple[bytes, bytes],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "VERIFIED_CACHE_SIZE", 3)
    verifier = _verifier(keypair)
    tokens = [_token(keypair, sub=f"u-{i}") for i in range(5)]
    for t in tokens:
        verifier.verify(t)
    assert len(verifier._verified) == 3
    assert [verifier.verify(t).sub for t in tokens] == [f"u-{i}" for i in range(5)]


def test_failed_authentications_still_reach_the_limiter(keypair: tuple[bytes, bytes]) -> None:
    app, _ = web.create_base_app("t", auth_failure_limit=3, auth_failure_window_s=60)
    init_auth(app, _verifier(keypair))

    @app.get("/who")
    @requires("officer")
    def who() -> Any:
        return {"sub": auth.current_principal().sub}

    client = app.test_client()
    good = {"Authorization": f"Bearer {_token(keypair)}"}
    assert client.get("/who", headers=good).status_code == 200
    assert client.get("/who", headers=good).status_code == 200  # cached
    bad = {"Authorization": f"Bearer {_token(keypair)}x"}
    assert [client.get("/who", headers=bad).status_code for _ in range(3)] == [401] * 3
    assert client.get("/who", headers=bad).status_code == 429
    assert client.get("/who", headers=good).status_code == 429  # a valid token does not reset


# --- request parsing, depth, headers, metrics -------------------------------------------

def test_argument_schemas_are_built_once_per_class() -> None:
    built = []

    class Args(Schema):
        n = fields.Integer(required=True)

        def __init__(self, *a: Any, **k: Any) -> None:
            built.append(1)
            super().__init__(*a, **k)

    parser = web.StrictParser()
    app, _ = web.create_base_app("t")
    for n in (1, 2, 3):
        with app.test_request_context("/", method="POST", json={"n": n}):
            assert parser.parse(Args, location="json") == {"n": n}
    with app.test_request_context("/", method="POST", json={"n": "x"}), \
            pytest.raises(Exception):  # noqa: B017 - webargs aborts with 422
        parser.parse(Args, location="json")
    assert built == [1]


def test_the_depth_precheck_agrees_with_the_scan() -> None:
    rng = random.Random(7)
    pieces = [b"[", b"]", b"{", b"}", b'"[{"', b'"a\\"["', b"1", b",", b":", b" "]
    for _ in range(3000):
        body = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 120)))
        assert web.too_deep(body) == (web.json_depth(body) > web.MAX_JSON_DEPTH), body
    assert web.too_deep(b"[" * 33 + b"]" * 33) and not web.too_deep(b"[" * 32 + b"]" * 32)


def _app() -> Any:
    app, _ = web.create_base_app("hot-path-test")

    @app.get("/plain")
    def plain() -> Any:
        return {"ok": True}

    @app.get("/cached")
    def cached() -> Any:
        resp = Response("{}", mimetype="application/json")
        resp.headers["Cache-Control"] = "max-age=5"
        resp.headers["x-frame-options"] = "SAMEORIGIN"  # the kit's value wins, as before
        return resp

    return app


def test_response_headers_are_those_the_per_header_sets_gave() -> None:
    client = _app().test_client()
    plain = client.get("/plain", headers={"X-Request-ID": "req-12345678"})
    cached = client.get("/cached")
    for resp in (plain, cached):
        names = [k.lower() for k, _ in resp.headers.items()]
        assert len(names) == len(set(names))  # each header once
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        assert resp.headers["Content-Security-Policy"] == \
            "default-src 'none'; frame-ancestors 'none'"
    assert plain.headers["X-Request-ID"] == "req-12345678"
    assert plain.headers["X-Correlation-ID"] == "req-12345678"
    assert plain.headers["Cache-Control"] == "no-store"
    assert cached.headers["Cache-Control"] == "max-age=5"


def test_request_metrics_count_every_request() -> None:
    client = _app().test_client()

    def count(status: str) -> float:
        return REGISTRY.get_sample_value("http_requests_total", {
            "service": "hot-path-test", "endpoint": "/plain", "method": "GET",
            "status": status}) or 0.0

    before = count("200")
    for _ in range(3):
        client.get("/plain")
    assert count("200") == before + 3
    timed = REGISTRY.get_sample_value("http_request_duration_seconds_count", {
        "service": "hot-path-test", "endpoint": "/plain", "method": "GET"})
    assert timed is not None and timed >= 3


def test_plain_functions_are_remembered_as_sync_bound_methods_are_not() -> None:
    app = _app()

    def hook() -> None:
        return None

    class Holder:
        def method(self) -> None:
            return None

    assert app.ensure_sync(hook) is hook and hook in app._sync_functions
    bound = Holder().method
    assert app.ensure_sync(bound) == bound and bound not in app._sync_functions


# --- logs and crypto --------------------------------------------------------------------

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
_PHONE = re.compile(r"\+?\d[\d ()-]{7,}\d")


def test_the_scrubber_precheck_changes_nothing() -> None:
    rng = random.Random(11)
    alphabet = "ab19 ()-+@._xé\n"
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        expected = _PHONE.sub("[redacted-phone]", _EMAIL.sub("[redacted-email]", text))
        assert logs.scrub(text) == expected, text
    assert logs.scrub("call +1 555 010 9999 or a.b@c.org") == \
        "call [redacted-phone] or [redacted-email]"


def test_log_lines_are_encoded_as_json_dumps_did() -> None:
    import datetime as dt
    import logging

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "request", (), None)
    record.fields = {"when": dt.datetime(2026, 1, 2, tzinfo=dt.UTC), "n": 1.5, "s": "é"}
    line = logs.JsonFormatter("svc").format(record)
    assert json.loads(line)["when"] == "2026-01-02 00:00:00+00:00"
    assert '"s": "\\u00e9"' in line  # ensure_ascii, as json.dumps


def test_the_field_sealer_makes_what_encrypt_field_makes() -> None:
    dek = crypto.new_data_key()
    sealer = crypto.FieldSealer(dek)
    place = {"table": "subjects", "column": "phone", "row_id": "r-1", "key_version": 1}
    tokens = {sealer.seal("+15550100000", **place) for _ in range(3)}
    assert len(tokens) == 3  # a fresh nonce each time
    for token in tokens:
        assert crypto.decrypt_field(dek, token, **place) == "+15550100000"
        with pytest.raises(crypto.DecryptionError):
            crypto.decrypt_field(dek, token, **{**place, "column": "email"})
    assert "FieldSealer()" == repr(sealer)
    with pytest.raises(ValueError):
        crypto.FieldSealer(b"short")


def test_associated_data_is_byte_for_byte_what_json_made() -> None:
    """Ciphertexts stored before the shortcut must keep opening: same bytes, always."""
    def by_json(*parts: Any) -> bytes:
        return json.dumps(list(parts), separators=(",", ":"), ensure_ascii=False).encode()

    rng = random.Random(5)
    alphabet = ["a", "Z", '"', "\\", "\n", "\x00", "\x1f", "\x7f", "é", "\u2028", "💡", " ", "1"]
    for _ in range(20000):
        parts: list[Any] = []
        for _ in range(rng.randint(0, 5)):
            roll = rng.random()
            parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
                         if roll < 0.6 else rng.randint(-10**20, 10**20) if roll < 0.9
                         else True)
        assert crypto._canonical(*parts) == by_json(*parts), parts
    assert crypto._canonical("field", "subjects", "phone", "r-1", 1) == \
        b'["field","subjects","phone","r-1",1]'
