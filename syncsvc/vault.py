"""Authenticated encryption of tokens and secrets at rest, with a key ring and rotation.

Ciphertexts are compact strings ``v1.<kid>.<base64url(nonce || AES-256-GCM ciphertext+tag)>``. New
writes use the primary key; any key in the ring decrypts. The associated data binds each
ciphertext to its envelope header, its purpose and its row (``syncsvc/v1/<kid>/<purpose>/<row>``),
so a refresh token copied into another connection's row, or into another column, fails to decrypt
instead of silently working. Plaintext never leaves this module except as a return value.

A vault built from a key file re-reads the file when it meets an unknown key id, when the file
has changed (one ``stat`` before each encryption) and when
told to (``serve`` and ``worker`` do on SIGHUP), so running processes pick up the new primary of
``syncsvc keys rotate`` and write new ciphertexts under it without a restart. A file that cannot
be read or parsed leaves the ring as it was.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from syncsvc.errors import ConfigError, VaultError
from syncsvc.settings import VAULT_KEY_BYTES, Settings, VaultKey, read_key_file

VERSION = "v1"
NONCE_BYTES = 12
#: Do not re-read the key file more often than this when unknown key ids keep arriving.
RELOAD_INTERVAL_SECONDS = 5.0

log = structlog.get_logger(__name__)

#: What identifies one version of a key file: a rotation replaces it (new inode, new mtime).
_FileStamp = tuple[int, int, int]


def _stamp(path: Path) -> _FileStamp | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return (status.st_ino, status.st_mtime_ns, status.st_size)


class Purpose(StrEnum):
    """What a ciphertext is; part of the associated data."""

    # S105: these are the names of purposes, not secrets.
    CLIENT_SECRET = "tenant.client_secret"  # noqa: S105
    PRIVATE_KEY = "tenant.private_key"
    REFRESH_TOKEN = "credential.refresh_token"  # noqa: S105
    ACCESS_TOKEN = "credential.access_token"  # noqa: S105
    CODE_VERIFIER = "launch.code_verifier"


def key_id_of(ciphertext: str) -> str:
    """The key id recorded in a ciphertext envelope."""
    return _split(ciphertext)[1]


def _split(ciphertext: str) -> tuple[str, str, str]:
    parts = ciphertext.split(".")
    if len(parts) != 3 or parts[0] != VERSION or not parts[1] or not parts[2]:
        raise VaultError("The stored value is not a vault ciphertext.", reason="vault_malformed")
    return parts[0], parts[1], parts[2]


def _aad(kid: str, purpose: str, row: str) -> bytes:
    # Slashes cannot occur in kids; purposes are fixed; row ids are UUIDs or URL-safe link ids.
    return f"syncsvc/{VERSION}/{kid}/{purpose}/{row}".encode()


class Vault:
    """Encrypts and decrypts with a key ring whose first key is the primary."""

    def __init__(
        self,
        keys: Sequence[VaultKey],
        *,
        reload: Callable[[], Sequence[VaultKey]] | None = None,
        watch: Path | None = None,
    ) -> None:
        self._reload = reload
        self._last_reload = 0.0
        self._lock = threading.Lock()
        #: The key file whose changes are noticed before encrypting (with ``reload``).
        self._watch = watch if reload is not None else None
        self._watched = _stamp(self._watch) if self._watch is not None else None
        self._set_ring(keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> Vault:
        """The vault for ``settings``; ConfigError when no key is configured."""
        key_file = settings.vault_key_file
        if key_file is None:
            return cls(settings.vault_keys)
        return cls(settings.vault_keys, reload=lambda: read_key_file(key_file), watch=key_file)

    def refresh(self) -> bool:
        """Re-read the key file now (SIGHUP); whether the primary changed.

        A file that cannot be read or is invalid keeps the current ring (and is logged).
        """
        if self._reload is None:
            return False
        with self._lock:
            before = self._primary
            if self._watch is not None:
                self._watched = _stamp(self._watch)
            try:
                self._set_ring(self._reload())
            except ConfigError as exc:
                log.error("vault_key_file_unreadable", error=exc.message)
                return False
            if self._primary != before:
                log.info("vault_primary_key_changed", kid=self._primary, previous=before)
            return self._primary != before

    def _notice_new_keys(self) -> None:
        """Re-read the key file if it changed since last looked at (one ``stat``: a rotation
        replaces the file, so its inode, time and size change)."""
        if self._watch is None:
            return
        if _stamp(self._watch) != self._watched:
            self.refresh()

    def _set_ring(self, keys: Sequence[VaultKey]) -> None:
        if not keys:
            raise ConfigError(
                "No vault key is configured: run `syncsvc keys init` (a key file in the data "
                "folder), or set SYNCSVC_VAULT_KEY_FILE or SYNCSVC_VAULT_KEYS."
            )
        # The ciphers first: a concurrent encrypt never sees a primary without its cipher.
        self._ciphers = {key.kid: AESGCM(key.key) for key in keys}
        self._primary = keys[0].kid

    @property
    def primary_kid(self) -> str:
        """The key id new ciphertexts are written under."""
        return self._primary

    @property
    def kids(self) -> tuple[str, ...]:
        """Every key id in the ring, primary first."""
        return tuple(self._ciphers)

    def encrypt(self, plaintext: str, *, purpose: Purpose, row: str) -> str:
        """Encrypt ``plaintext`` under the primary key, bound to ``purpose`` and ``row``."""
        self._notice_new_keys()
        kid = self._primary
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._ciphers[kid].encrypt(nonce, plaintext.encode(), _aad(kid, purpose, row))
        body = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")
        return f"{VERSION}.{kid}.{body}"

    def decrypt(self, ciphertext: str, *, purpose: Purpose, row: str) -> str:
        """The plaintext, or VaultError if the key is unknown, the data tampered or misbound."""
        _, kid, body = _split(ciphertext)
        cipher = self._cipher(kid)
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError) as exc:
            raise VaultError("The stored value is corrupt.", reason="vault_malformed") from exc
        if len(raw) <= NONCE_BYTES:
            raise VaultError("The stored value is corrupt.", reason="vault_malformed")
        try:
            plain = cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(kid, purpose, row))
        except InvalidTag as exc:
            raise VaultError(
                "The stored value failed authentication (tampered, bound to another record, or "
                f"the configured bytes of key {kid!r} are wrong: `syncsvc keys status` tells).",
                reason="vault_auth_failed",
            ) from exc
        return plain.decode()

    def needs_rotation(self, ciphertext: str) -> bool:
        """Whether ``ciphertext`` is under a key other than the primary."""
        return key_id_of(ciphertext) != self._primary

    def reencrypt(self, ciphertext: str, *, purpose: Purpose, row: str) -> str:
        """``ciphertext`` under the primary key (unchanged if it already is)."""
        if not self.needs_rotation(ciphertext):
            return ciphertext
        return self.encrypt(
            self.decrypt(ciphertext, purpose=purpose, row=row), purpose=purpose, row=row
        )

    def _cipher(self, kid: str) -> AESGCM:
        cipher = self._ciphers.get(kid)
        if cipher is None and self._reload is not None:
            with self._lock:
                now = time.monotonic()
                if now - self._last_reload >= RELOAD_INTERVAL_SECONDS:
                    self._last_reload = now
                    self._set_ring(self._reload())
            cipher = self._ciphers.get(kid)
        if cipher is None:
            raise VaultError(
                f"The stored value is encrypted under key id {kid!r}, which is not configured.",
                reason="vault_unknown_key",
            )
        return cipher


def generate_key(kid: str | None = None) -> VaultKey:
    """A fresh random 256-bit key; the id defaults to ``k`` + a UTC date + 4 random hex digits."""
    if kid is None:
        kid = "k" + time.strftime("%Y%m%d", time.gmtime()) + secrets.token_hex(2)
    return VaultKey(kid=kid, key=secrets.token_bytes(VAULT_KEY_BYTES))


def format_key_ring(keys: Sequence[VaultKey]) -> str:
    """The ``SYNCSVC_VAULT_KEYS`` value for ``keys`` (primary first). Contains the secrets."""
    return ",".join(f"{key.kid}:{key.encoded()}" for key in keys)


def write_key_file(path: Path, keys: Sequence[VaultKey]) -> None:
    """Write ``keys`` (primary first) to ``path`` atomically, readable by the owner only."""
    if not keys:
        raise ConfigError("refusing to write an empty key file")
    document = {"primary": keys[0].kid, "keys": {key.kid: key.encoded() for key in keys}}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # O_EXCL + 0o600 from creation: the key is never briefly readable by others.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def ensure_key_file(path: Path) -> tuple[VaultKey, ...]:
    """The key ring in ``path``, creating the file with one new key if it does not exist."""
    if path.exists():
        return read_key_file(path)
    keys = (generate_key(),)
    write_key_file(path, keys)
    return keys


def add_primary_key(path: Path) -> VaultKey:
    """Generate a key, make it the primary in the key file at ``path`` (keeping the others)."""
    existing = read_key_file(path) if path.exists() else ()
    taken = {key.kid for key in existing}
    # Two rotations on one day share the date part; the random suffix makes a clash unlikely
    # and the bounded retry makes it impossible to loop forever.
    for _ in range(16):
        new = generate_key()
        if new.kid not in taken:
            write_key_file(path, (new, *existing))
            return new
    raise ConfigError("could not pick an unused key id; try again")


def remove_key(path: Path, kid: str) -> tuple[VaultKey, ...]:
    """Remove the non-primary key ``kid`` from the key file at ``path``; the ring left.

    ConfigError when the file does not hold ``kid`` or ``kid`` is its primary. Whether any
    ciphertext still needs the key is the caller's question (``syncsvc keys retire`` asks).
    """
    existing = read_key_file(path)
    if kid not in {key.kid for key in existing}:
        raise ConfigError(f"the key file {path} holds no key {kid!r}")
    if existing[0].kid == kid:
        raise ConfigError(f"{kid!r} is the primary key: rotate to a new primary first")
    remaining = tuple(key for key in existing if key.kid != kid)
    write_key_file(path, remaining)
    return remaining


class KeyProof(StrEnum):
    """What decrypting a key's sample ciphertexts showed."""

    PROVEN = "proven"
    #: Not one sample decrypts: the configured bytes are not the ones they were written with.
    WRONG_BYTES = "wrong key bytes"
    #: Some decrypt and some do not: those rows were altered or moved, the key is fine.
    SOME_FAIL = "some ciphertexts fail"
    UNPROVEN = "unproven"


def prove_key(vault: Vault, samples: Sequence[tuple[str, Purpose, str]]) -> tuple[KeyProof, int]:
    """Decrypt each ``(ciphertext, purpose, row)`` of one key; the verdict and how many failed."""
    if not samples:
        return KeyProof.UNPROVEN, 0
    failed = 0
    for ciphertext, purpose, row in samples:
        try:
            vault.decrypt(ciphertext, purpose=purpose, row=row)
        except VaultError:
            failed += 1
    if not failed:
        return KeyProof.PROVEN, 0
    return (KeyProof.WRONG_BYTES if failed == len(samples) else KeyProof.SOME_FAIL), failed
