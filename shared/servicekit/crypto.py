"""Envelope encryption of personal data (DESIGN.md section 6).

Three layers of keys:

* a **key-encryption key** (KEK) from a :class:`Keyring` (env/file by default; a cloud KMS
  can stand in through the :class:`KmsAdapter` protocol);
* a random **data key** (DEK) per subject, stored only wrapped by a KEK
  (``kek:<kid>:<b64url(nonce+ct)>``); deleting the wrapped key crypto-shreds the subject;
* **field ciphertexts** (``v1:<b64url(nonce+ct)>``), AES-256-GCM under the data key, whose
  associated data binds them to their table, column, row id and key version, so a
  ciphertext copied to another place fails to decrypt instead of revealing a value there.

KEK rotation re-wraps data keys only; field ciphertexts are never touched by it. Every
decryption failure raises :class:`DecryptionError`, whose message never carries key
material or plaintext.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Protocol
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # 96-bit GCM nonce, random per encryption
_TAG_BYTES = 16
_FIELD_PREFIX = "v1"
_WRAP_PREFIX = "kek"
_KID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]+")

RowId = str | int | UUID


class DecryptionError(Exception):
    """A ciphertext or wrapped key could not be opened (tampered, misplaced, wrong key,
    unknown key id or malformed). The message is generic on purpose."""


class _SettingsLike(Protocol):
    """What :func:`load_pseudonym_key` reads (servicekit.settings.Settings fits)."""

    def get(self, name: str, /) -> str: ...


class KmsAdapter(Protocol):
    """What the PII code needs from a key-management service: wrap and unwrap data keys.

    ``aad`` is the context the wrapped key is bound to (the subject id); unwrapping with a
    different context must fail. :class:`Keyring` is the default, file/env backed adapter.
    """

    def wrap(self, dek: bytes, aad: str, /) -> str:
        """Encrypt a data key; return an ASCII token naming the key that wrapped it."""
        ...

    def unwrap(self, wrapped: str, aad: str, /) -> bytes:
        """Return the data key inside ``wrapped``; raise :class:`DecryptionError` on failure."""
        ...


# --- encoding helpers -------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    if not _B64URL_RE.fullmatch(text):
        raise DecryptionError("malformed ciphertext")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise DecryptionError("malformed ciphertext") from None


_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')  # what json.dumps escapes (ensure_ascii=False)


def _canonical(*parts: str | int) -> bytes:
    """Unambiguous encoding of a tuple (JSON array: strings are quoted and escaped).

    Byte for byte ``json.dumps(list(parts), separators=(",", ":"), ensure_ascii=False)``
    (associated data must never change): strings without a character JSON escapes and plain
    ints are written directly (the usual table, column and id parts), anything else by json.
    """
    out = []
    for part in parts:
        kind = type(part)
        if kind is str and not _NEEDS_ESCAPE.search(part):  # type: ignore[arg-type]
            out.append(f'"{part}"')
        elif kind is int:
            out.append(str(part))
        else:
            return json.dumps(list(parts), separators=(",", ":"),
                              ensure_ascii=False).encode("utf-8")
    return f"[{','.join(out)}]".encode()


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> str:
    nonce = os.urandom(NONCE_BYTES)
    return _b64url(nonce + AESGCM(key).encrypt(nonce, plaintext, aad))


def _open(key: bytes, body: str, aad: bytes) -> bytes:
    blob = _unb64url(body)
    if len(key) != KEY_BYTES or len(blob) < NONCE_BYTES + _TAG_BYTES:
        raise DecryptionError("ciphertext cannot be decrypted")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag:
        raise DecryptionError("ciphertext cannot be decrypted") from None


def _check_key(key: bytes, what: str) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ValueError(f"{what} must be {KEY_BYTES} bytes")


# --- data keys and fields ---------------------------------------------------------------


def new_data_key() -> bytes:
    """Return a fresh random 256-bit data key (one per subject)."""
    return os.urandom(KEY_BYTES)


def _field_aad(table: str, column: str, row_id: RowId, key_version: int) -> bytes:
    if isinstance(key_version, bool) or not isinstance(key_version, int):
        raise TypeError("key_version must be an int")
    return _canonical("field", table, column, str(row_id), key_version)


def encrypt_field(
    dek: bytes, plaintext: str, *, table: str, column: str, row_id: RowId, key_version: int
) -> str:
    """Encrypt one field value with AES-256-GCM; return ``v1:<b64url(nonce+ct)>``.

    The nonce is fresh per call (random 96 bits; safe far beyond the number of fields one
    subject's key ever encrypts). ``row_id`` is compared as ``str(row_id)``.
    ``key_version`` is the version of the data key used, stored beside the ciphertext.
    """
    _check_key(dek, "data key")
    aad = _field_aad(table, column, row_id, key_version)
    return f"{_FIELD_PREFIX}:{_seal(dek, plaintext.encode('utf-8'), aad)}"


class FieldSealer:
    """:func:`encrypt_field` for several values under one data key (a subject's fields): the
    AES-GCM cipher is set up once instead of once per value. Same tokens, fresh nonces."""

    __slots__ = ("_aead",)

    def __init__(self, dek: bytes) -> None:
        _check_key(dek, "data key")
        self._aead = AESGCM(dek)

    def __repr__(self) -> str:  # never show key material
        return "FieldSealer()"

    def seal(self, plaintext: str, *, table: str, column: str, row_id: RowId,
             key_version: int) -> str:
        aad = _field_aad(table, column, row_id, key_version)
        nonce = os.urandom(NONCE_BYTES)
        body = _b64url(nonce + self._aead.encrypt(nonce, plaintext.encode("utf-8"), aad))
        return f"{_FIELD_PREFIX}:{body}"


def decrypt_field(
    dek: bytes, token: str, *, table: str, column: str, row_id: RowId, key_version: int
) -> str:
    """Decrypt a value made by :func:`encrypt_field` for exactly this place and version.

    Raises :class:`DecryptionError` on any failure, including a ciphertext moved to another
    table, column or row, a wrong key version or data key, and a malformed token.
    """
    prefix, sep, body = token.partition(":") if isinstance(token, str) else ("", "", "")
    if prefix != _FIELD_PREFIX or not sep:
        raise DecryptionError("malformed ciphertext")
    aad = _field_aad(table, column, row_id, key_version)
    try:
        return _open(dek, body, aad).decode("utf-8")
    except UnicodeDecodeError:
        raise DecryptionError("ciphertext cannot be decrypted") from None


def blind_index(key: bytes, value: str, *, purpose: str = "") -> str:
    """Keyed hash of a normalised value, for equality lookups without plaintext.

    Normalisation: Unicode NFKC, surrounding whitespace stripped, inner runs of
    whitespace collapsed to one space, case-folded; so ``" Ada  LOVELACE"`` and
    ``"ada lovelace"`` index alike. Returns HMAC-SHA256 as 64 hex characters.

    ``key`` (at least 32 bytes) must be its own secret, not a KEK or data key, and stable:
    changing it means recomputing every stored index. ``purpose`` (e.g. ``"phone"``)
    separates domains so equal values in different fields do not share an index. A blind
    index still reveals equality, and low-entropy values (birth dates) can be guessed by
    anyone holding the key: index only what duplicate detection needs.
    """
    if not isinstance(key, bytes) or len(key) < KEY_BYTES:
        raise ValueError(f"blind index key must be at least {KEY_BYTES} bytes")
    normalised = " ".join(unicodedata.normalize("NFKC", value).split()).casefold()
    message = _canonical("blind-index", purpose, normalised)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


# --- files ------------------------------------------------------------------------------


def write_file_once(path: Path, data: bytes, mode: int = 0o600) -> bool:
    """Create ``path`` holding ``data`` atomically, unless it already exists.

    The data goes to a temporary file in the same directory (created 0600) which is then
    hard-linked into place: ``link`` never replaces an existing file, so when processes race
    the first writer wins, readers never see a partial file, and every loser can read the
    winner's file. Returns True if this call created the file. Needs a filesystem with hard
    links (any local POSIX filesystem).
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


# --- keyring ----------------------------------------------------------------------------


class Keyring:
    """Key-encryption keys by key id, one of them active; a :class:`KmsAdapter`.

    Immutable: rotation returns a new keyring (:meth:`with_new_active_key`) that the caller
    persists. Old keys stay so existing wrapped keys keep unwrapping until re-wrapped.
    """

    def __init__(self, keys: Mapping[str, bytes], active: str) -> None:
        for kid, key in keys.items():
            if not isinstance(kid, str) or not _KID_RE.fullmatch(kid):
                raise ValueError("key ids must match [A-Za-z0-9._-]{1,64}")
            _check_key(key, f"key {kid!r}")
        if active not in keys:
            raise ValueError("the active key id is not in the keyring")
        self._keys: Mapping[str, bytes] = MappingProxyType(dict(keys))
        self._active = active

    def __repr__(self) -> str:  # never show key material
        return f"Keyring(active={self._active!r}, kids={sorted(self._keys)!r})"

    @property
    def active(self) -> str:
        """Id of the key that wraps new data keys."""
        return self._active

    @property
    def kids(self) -> frozenset[str]:
        """Ids of every key in the ring."""
        return frozenset(self._keys)

    @classmethod
    def generate(cls) -> Keyring:
        """A new keyring with one random key, ``k1``, active."""
        return cls({"k1": new_data_key()}, "k1")

    @classmethod
    def from_json(cls, text: str) -> Keyring:
        """Parse ``{"active": "k1", "keys": {"k1": "<base64 of 32 bytes>", ...}}``."""
        try:
            doc = json.loads(text)
            active, encoded = doc["active"], doc["keys"]
            keys = {kid: base64.b64decode(b64, validate=True) for kid, b64 in encoded.items()}
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise ValueError("keyring JSON is malformed") from None
        return cls(keys, active)

    def to_json(self) -> str:
        """Serialise in the format :meth:`from_json` reads (contains secrets)."""
        keys = {kid: base64.b64encode(key).decode("ascii") for kid, key in self._keys.items()}
        return json.dumps({"active": self._active, "keys": keys}, indent=2, sort_keys=True)

    @classmethod
    def load(cls, inline: str, path: Path, create: bool) -> Keyring:
        """The inline JSON if given, else the file at ``path``.

        A missing file is created (0600, race-safe, see :func:`write_file_once`) when
        ``create`` is true, as in development; otherwise it is an error.
        """
        if inline.strip():
            return cls.from_json(inline)
        if not path.exists():
            if not create:
                raise FileNotFoundError(f"keyring file {path} does not exist")
            write_file_once(path, cls.generate().to_json().encode("utf-8"), 0o600)
        return cls.from_json(path.read_text(encoding="utf-8"))

    def with_new_active_key(self) -> Keyring:
        """Rotation: a copy with one more random key, which becomes active."""
        numbers = [int(kid[1:]) for kid in self._keys if re.fullmatch(r"k\d{1,9}", kid)]
        kid = f"k{max(numbers, default=0) + 1}"
        while kid in self._keys:  # only if ids were chosen by hand
            kid = f"k{secrets.token_hex(4)}"
        return Keyring({**self._keys, kid: new_data_key()}, kid)

    def derive_key(self, purpose: str) -> bytes:
        """A 32-byte key for ``purpose`` (e.g. pseudonyms), derived with HKDF-SHA256 from the
        first key ever added (sorted id), so it survives rotation while old keys are kept."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        root = self._keys[sorted(self._keys)[0]]
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=f"referrals:{purpose}".encode()).derive(root)

    @staticmethod
    def _wrap_aad(kid: str, subject_id: str) -> bytes:
        return _canonical("data-key", kid, str(subject_id))

    def wrap(self, dek: bytes, subject_id: str) -> str:
        """Encrypt a data key with the active KEK, bound to the subject id and key id."""
        _check_key(dek, "data key")
        body = _seal(self._keys[self._active], dek, self._wrap_aad(self._active, subject_id))
        return f"{_WRAP_PREFIX}:{self._active}:{body}"

    def unwrap(self, wrapped: str, subject_id: str) -> bytes:
        """Return the data key in ``wrapped``, using the KEK its token names."""
        kid = wrapped_key_id(wrapped)
        key = self._keys.get(kid)
        if key is None:
            raise DecryptionError("wrapped key names a key id this keyring does not hold")
        body = wrapped.split(":", 2)[2]
        return _open(key, body, self._wrap_aad(kid, subject_id))

    def rewrap(self, wrapped: str, subject_id: str) -> str:
        """Re-wrap a data key under the active KEK (unchanged if it already uses it)."""
        dek = self.unwrap(wrapped, subject_id)
        if wrapped_key_id(wrapped) == self._active:
            return wrapped
        return self.wrap(dek, subject_id)


def wrapped_key_id(wrapped: str) -> str:
    """The KEK id a wrapped data key names (e.g. to find keys still needing re-wrap)."""
    parts = wrapped.split(":", 2) if isinstance(wrapped, str) else []
    if len(parts) != 3 or parts[0] != _WRAP_PREFIX or not _KID_RE.fullmatch(parts[1]):
        raise DecryptionError("malformed wrapped key")
    return parts[1]


# --- officer pseudonym (referral-intake writes it into events, notifications reads feeds) ---


def officer_pseudonym(key: bytes, sub: str) -> str:
    """The officer's pseudonym (``officer_ref`` in events): HMAC of the token's ``sub``.

    Both referral-intake (which stamps it on events) and notifications (which matches an
    officer's token to their feed) compute it, so the key is its own secret
    (``PSEUDONYM_KEY``), not derived from the PII keyring that notifications must not hold.
    """
    return blind_index(key, sub, purpose="officer")


def load_pseudonym_key(settings: _SettingsLike) -> bytes:
    """The pseudonym key: ``PSEUDONYM_KEY`` (base64 of >= 32 bytes) if set, else the file
    ``PSEUDONYM_KEY_FILE``, created (0600, race-safe) when ``DEV_KEYS=1``."""
    inline, path = settings.get("PSEUDONYM_KEY").strip(), Path(settings.get("PSEUDONYM_KEY_FILE"))
    if not inline:
        if not path.exists():
            if settings.get("DEV_KEYS") != "1":
                raise FileNotFoundError(f"pseudonym key file {path} does not exist")
            write_file_once(path, base64.b64encode(new_data_key()) + b"\n", 0o600)
        inline = path.read_text(encoding="ascii").strip()
    try:
        key = base64.b64decode(inline, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("pseudonym key is not base64") from None
    if len(key) < KEY_BYTES:
        raise ValueError(f"pseudonym key must be at least {KEY_BYTES} bytes")
    return key
