"""Envelope encryption: fields bound to their place, data keys wrapped by rotatable KEKs."""
from __future__ import annotations

import base64
import json
import stat
import threading
from pathlib import Path
from typing import TypedDict

import pytest

from servicekit.crypto import (
    DecryptionError,
    Keyring,
    KmsAdapter,
    blind_index,
    decrypt_field,
    encrypt_field,
    new_data_key,
    wrapped_key_id,
)


class Place(TypedDict):
    table: str
    column: str
    row_id: str
    key_version: int


def _at(
    table: str = "subjects", column: str = "given_name", row_id: str = "r-1", key_version: int = 1
) -> Place:
    return Place(table=table, column=column, row_id=row_id, key_version=key_version)


PLACE = _at()
SECRET = "Ada Lovelace"


@pytest.fixture
def dek() -> bytes:
    return new_data_key()


def _body(token: str) -> bytes:
    body = token.rpartition(":")[2]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def _tamper(token: str) -> str:
    """Flip one bit of the ciphertext body (after the last ':')."""
    head = token.rpartition(":")[0]
    blob = bytearray(_body(token))
    blob[len(blob) // 2] ^= 0x01
    return f"{head}:{base64.urlsafe_b64encode(bytes(blob)).rstrip(b'=').decode()}"


def test_field_round_trip(dek: bytes) -> None:
    token = encrypt_field(dek, SECRET, **PLACE)
    assert token.startswith("v1:")
    assert SECRET not in token
    assert decrypt_field(dek, token, **PLACE) == SECRET


def test_unicode_and_empty_values_round_trip(dek: bytes) -> None:
    for value in ("", "Zoë Ørsted — 日本"):
        assert decrypt_field(dek, encrypt_field(dek, value, **PLACE), **PLACE) == value


def test_two_encryptions_of_the_same_text_use_different_nonces(dek: bytes) -> None:
    first = encrypt_field(dek, SECRET, **PLACE)
    second = encrypt_field(dek, SECRET, **PLACE)
    assert first != second
    assert _body(first)[:12] != _body(second)[:12]


def test_tampered_ciphertext_is_rejected(dek: bytes) -> None:
    token = encrypt_field(dek, SECRET, **PLACE)
    with pytest.raises(DecryptionError):
        decrypt_field(dek, _tamper(token), **PLACE)


@pytest.mark.parametrize(
    "moved",
    [_at(row_id="r-2"), _at(column="family_name"), _at(table="referrals"), _at(key_version=2)],
    ids=["other-row", "other-column", "other-table", "other-key-version"],
)
def test_ciphertext_moved_elsewhere_is_rejected(dek: bytes, moved: Place) -> None:
    token = encrypt_field(dek, SECRET, **PLACE)
    with pytest.raises(DecryptionError):
        decrypt_field(dek, token, **moved)


def test_wrong_data_key_is_rejected_without_leaking_anything(dek: bytes) -> None:
    token = encrypt_field(dek, SECRET, **PLACE)
    other = new_data_key()
    with pytest.raises(DecryptionError) as caught:
        decrypt_field(other, token, **PLACE)
    message = str(caught.value)
    assert SECRET not in message
    assert token[3:] not in message
    assert base64.b64encode(other).decode() not in message


@pytest.mark.parametrize(
    "token", ["", "v1", "v1:", "v2:AAAA", "v1:!!!!", "v1:AAAA", "garbage", "v1:" + "A" * 37]
)
def test_malformed_tokens_raise_decryption_error(dek: bytes, token: str) -> None:
    with pytest.raises(DecryptionError):
        decrypt_field(dek, token, **PLACE)


def test_a_keyring_is_a_kms_adapter() -> None:
    kms: KmsAdapter = Keyring.generate()
    dek = new_data_key()
    assert kms.unwrap(kms.wrap(dek, "subject-1"), "subject-1") == dek


def test_wrapped_key_names_the_active_kid_and_is_bound_to_the_subject() -> None:
    ring, dek = Keyring.generate(), new_data_key()
    wrapped = ring.wrap(dek, "subject-1")
    assert wrapped.startswith("kek:k1:")
    assert ring.unwrap(wrapped, "subject-1") == dek
    with pytest.raises(DecryptionError):
        ring.unwrap(wrapped, "subject-2")
    with pytest.raises(DecryptionError):
        ring.unwrap(_tamper(wrapped), "subject-1")


def test_rotation_rewraps_data_keys_and_leaves_field_ciphertexts_alone() -> None:
    ring, dek = Keyring.generate(), new_data_key()
    old_wrapped = ring.wrap(dek, "s-1")
    field = encrypt_field(dek, SECRET, **PLACE)

    rotated = ring.with_new_active_key()
    assert rotated.active == "k2" and rotated.kids == {"k1", "k2"}
    assert rotated.unwrap(old_wrapped, "s-1") == dek  # old tokens still open

    new_wrapped = rotated.rewrap(old_wrapped, "s-1")
    assert wrapped_key_id(new_wrapped) == "k2"
    assert rotated.rewrap(new_wrapped, "s-1") == new_wrapped  # already current
    assert decrypt_field(rotated.unwrap(new_wrapped, "s-1"), field, **PLACE) == SECRET


def test_unwrap_with_a_keyring_lacking_the_kid_fails() -> None:
    rotated = Keyring.generate().with_new_active_key()
    wrapped = rotated.wrap(new_data_key(), "s-1")
    only_old = Keyring({"k1": new_data_key()}, "k1")
    with pytest.raises(DecryptionError):
        only_old.unwrap(wrapped, "s-1")


def test_same_kid_with_different_key_material_fails() -> None:
    wrapped = Keyring.generate().wrap(new_data_key(), "s-1")
    with pytest.raises(DecryptionError):
        Keyring.generate().unwrap(wrapped, "s-1")


def test_crypto_shredding_without_the_wrapped_key_nothing_decrypts() -> None:
    ring = Keyring.generate()
    dek = new_data_key()
    wrapped = ring.wrap(dek, "s-1")
    values = ["Ada", "+44 20 7946 0000", "ada@example.org"]
    fields = [encrypt_field(dek, v, **_at(row_id=f"r-{i}")) for i, v in enumerate(values)]
    del wrapped, dek  # erasure deletes the only copy of the wrapped data key

    # the keyring alone cannot help: it holds KEKs, and no KEK or fresh key opens the fields
    for i, token in enumerate(fields):
        keks = [base64.b64decode(k) for k in json.loads(ring.to_json())["keys"].values()]
        for key in [new_data_key(), *keks]:
            with pytest.raises(DecryptionError):
                decrypt_field(key, token, **_at(row_id=f"r-{i}"))


def test_keyring_json_round_trip_and_repr_hides_keys() -> None:
    ring = Keyring.generate().with_new_active_key()
    again = Keyring.from_json(ring.to_json())
    assert again.active == ring.active and again.kids == ring.kids
    dek = new_data_key()
    assert again.unwrap(ring.wrap(dek, "s"), "s") == dek
    for encoded in json.loads(ring.to_json())["keys"].values():
        assert encoded not in repr(ring)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "{}",
        '{"active": "k1", "keys": {"k1": "c2hvcnQ="}}',
        '{"active": "k9", "keys": {"k1": "' + base64.b64encode(b"x" * 32).decode() + '"}}',
        '{"active": "k:1", "keys": {"k:1": "' + base64.b64encode(b"x" * 32).decode() + '"}}',
        '{"active": "k1", "keys": ["k1"]}',
    ],
)
def test_malformed_keyring_json_is_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        Keyring.from_json(text)


def test_load_prefers_inline_json(tmp_path: Path) -> None:
    inline = Keyring.generate()
    loaded = Keyring.load(inline.to_json(), tmp_path / "ring.json", create=True)
    assert loaded.to_json() == inline.to_json()
    assert not (tmp_path / "ring.json").exists()


def test_load_without_file_and_without_create_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Keyring.load("", tmp_path / "missing.json", create=False)


def test_load_creates_a_private_keyring_file_once(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "ring.json"
    first = Keyring.load("", path, create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = Keyring.load("", path, create=True)
    assert second.to_json() == first.to_json()


def test_concurrent_load_creates_one_keyring(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    barrier, results = threading.Barrier(8), []

    def load() -> None:
        barrier.wait()
        results.append(Keyring.load("", path, create=True).to_json())

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and len(set(results)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ring.json"]  # no temp files left


def test_blind_index_matches_normalised_values_only() -> None:
    key = new_data_key()
    assert blind_index(key, "  Ada   LOVELACE ") == blind_index(key, "ada lovelace")
    assert blind_index(key, "ada lovelace") != blind_index(key, "ada byron")
    assert blind_index(key, "ada") != blind_index(new_data_key(), "ada")
    assert blind_index(key, "ada", purpose="email") != blind_index(key, "ada", purpose="name")
    assert "ada" not in blind_index(key, "ada") and len(blind_index(key, "ada")) == 64


def test_blind_index_refuses_short_keys() -> None:
    with pytest.raises(ValueError):
        blind_index(b"short", "value")
