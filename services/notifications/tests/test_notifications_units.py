"""Unit tests without services: webhook URL rules and signatures, the pseudonym key."""
from __future__ import annotations

import base64
from pathlib import Path

import pytest

from notifications import channels
from servicekit import crypto
from servicekit.settings import Settings


def _resolver(*addresses: str) -> channels.Resolver:
    return lambda _host: list(addresses)


@pytest.mark.parametrize("addresses, ok", [
    (("93.184.216.34",), True),
    (("93.184.216.34", "10.0.0.5"), False),   # one private address is enough to refuse
    (("100.64.1.1",), False),                 # carrier-grade NAT
    (("fd00::1",), False),                    # unique local IPv6
    (("169.254.169.254",), False),            # cloud metadata
    ((), False),
])
def test_a_hostname_is_judged_by_every_address_it_resolves_to(addresses: tuple[str, ...],
                                                              ok: bool) -> None:
    problem = channels.check_webhook_url("https://hooks.example.org/x", allow_http=False,
                                         allow_private=False, resolver=_resolver(*addresses))
    assert (problem == "") is ok, problem


def test_an_unresolvable_host_is_refused_unless_private_targets_are_allowed() -> None:
    def broken(_host: str) -> list[str]:
        raise OSError("no such host")

    assert channels.check_webhook_url("https://nope.invalid/x", allow_http=False,
                                      allow_private=False, resolver=broken) == \
        "host does not resolve"
    assert channels.check_webhook_url("http://receiver:8080/x", allow_http=True,
                                      allow_private=True, resolver=broken) == ""


def test_signature_binds_timestamp_and_body() -> None:
    sig = channels.sign("whsec_k", "1700000000", b'{"a":1}')
    assert channels.verify("whsec_k", "1700000000", b'{"a":1}', sig, now=1700000100)
    assert not channels.verify("whsec_k", "1700000000", b'{"a":2}', sig, now=1700000100)
    assert not channels.verify("whsec_k", "1700000001", b'{"a":1}', sig, now=1700000100)
    assert not channels.verify("whsec_k", "1700000000", b'{"a":1}', sig, now=1700001000)
    assert not channels.verify("whsec_k", "soon", b'{"a":1}', sig)


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env("notifications", {"VAR_DIR": str(tmp_path), **env})


def test_pseudonym_key_is_created_once_in_dev_and_shared_by_every_reader(tmp_path: Path
                                                                         ) -> None:
    first = crypto.load_pseudonym_key(_settings(tmp_path))
    assert (tmp_path / "keys" / "officer-pseudonym.key").stat().st_mode & 0o777 == 0o600
    intake = Settings.from_env("referral-intake", {"VAR_DIR": str(tmp_path)})
    assert crypto.load_pseudonym_key(intake) == first
    assert crypto.officer_pseudonym(first, "officer-ortiz") == crypto.blind_index(
        first, "officer-ortiz", purpose="officer")  # what referral-intake stamps on events


def test_pseudonym_key_inline_wins_and_production_refuses_a_missing_or_short_key(
        tmp_path: Path) -> None:
    key = bytes(range(32))
    inline = _settings(tmp_path, PSEUDONYM_KEY=base64.b64encode(key).decode())
    assert crypto.load_pseudonym_key(inline) == key
    with pytest.raises(FileNotFoundError):
        crypto.load_pseudonym_key(_settings(tmp_path, DEV_KEYS="0"))
    with pytest.raises(ValueError, match="at least 32"):
        crypto.load_pseudonym_key(_settings(tmp_path, PSEUDONYM_KEY="c2hvcnQ="))
    with pytest.raises(ValueError, match="base64"):
        crypto.load_pseudonym_key(_settings(tmp_path, PSEUDONYM_KEY="not base64!"))
