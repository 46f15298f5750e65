"""The vault: authenticated encryption bound to purpose and row, key ids, rotation, key files."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from syncsvc.errors import VaultError
from syncsvc.settings import Settings, read_key_file
from syncsvc.vault import (
    Purpose,
    Vault,
    add_primary_key,
    ensure_key_file,
    format_key_ring,
    generate_key,
    key_id_of,
    write_key_file,
)

ROW = "0b8a3f7e-2b4c-4b7e-9d1a-5f3c2e1d0a9b"
OTHER_ROW = "7c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
TOKEN = "refresh-token-value-1234567890"


def test_round_trip_and_envelope() -> None:
    key = generate_key()
    vault = Vault([key])
    sealed = vault.encrypt(TOKEN, purpose=Purpose.REFRESH_TOKEN, row=ROW)
    assert sealed.startswith(f"v1.{key.kid}.")
    assert TOKEN not in sealed
    assert key_id_of(sealed) == key.kid
    assert vault.decrypt(sealed, purpose=Purpose.REFRESH_TOKEN, row=ROW) == TOKEN
    # A fresh nonce per encryption: equal plaintexts do not give equal ciphertexts.
    assert vault.encrypt(TOKEN, purpose=Purpose.REFRESH_TOKEN, row=ROW) != sealed


def test_ciphertext_copied_to_another_row_or_purpose_fails() -> None:
    vault = Vault([generate_key()])
    sealed = vault.encrypt(TOKEN, purpose=Purpose.REFRESH_TOKEN, row=ROW)
    with pytest.raises(VaultError) as caught:
        vault.decrypt(sealed, purpose=Purpose.REFRESH_TOKEN, row=OTHER_ROW)
    assert caught.value.reason == "vault_auth_failed"
    with pytest.raises(VaultError):
        vault.decrypt(sealed, purpose=Purpose.ACCESS_TOKEN, row=ROW)
    assert TOKEN not in caught.value.message


def test_tampered_ciphertext_fails() -> None:
    vault = Vault([generate_key()])
    sealed = vault.encrypt(TOKEN, purpose=Purpose.ACCESS_TOKEN, row=ROW)
    version, kid, body = sealed.split(".")
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[-1] ^= 0x01
    tampered = f"{version}.{kid}." + base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    with pytest.raises(VaultError, match="failed authentication"):
        vault.decrypt(tampered, purpose=Purpose.ACCESS_TOKEN, row=ROW)
    for broken in ("plaintext", "v2.k.abc", f"v1.{kid}.", f"v1.{kid}.AAAA", f"v1.{kid}.%%%"):
        with pytest.raises(VaultError):
            vault.decrypt(broken, purpose=Purpose.ACCESS_TOKEN, row=ROW)


def test_unknown_key_id_is_a_clear_error() -> None:
    sealed = Vault([generate_key("gone")]).encrypt(TOKEN, purpose=Purpose.CLIENT_SECRET, row=ROW)
    with pytest.raises(VaultError) as caught:
        Vault([generate_key("other")]).decrypt(sealed, purpose=Purpose.CLIENT_SECRET, row=ROW)
    assert caught.value.reason == "vault_unknown_key"
    assert "'gone'" in caught.value.message


def test_rotation_keeps_old_ciphertexts_readable_and_reencrypts() -> None:
    old = generate_key("old")
    before = Vault([old])
    sealed = before.encrypt(TOKEN, purpose=Purpose.REFRESH_TOKEN, row=ROW)
    assert not before.needs_rotation(sealed)

    after = Vault([generate_key("new"), old])
    assert after.primary_kid == "new"
    assert after.kids == ("new", "old")
    # Before re-encryption the old key still decrypts what it wrote.
    assert after.needs_rotation(sealed)
    assert after.decrypt(sealed, purpose=Purpose.REFRESH_TOKEN, row=ROW) == TOKEN
    rotated = after.reencrypt(sealed, purpose=Purpose.REFRESH_TOKEN, row=ROW)
    assert key_id_of(rotated) == "new"
    assert not after.needs_rotation(rotated)
    assert after.reencrypt(rotated, purpose=Purpose.REFRESH_TOKEN, row=ROW) == rotated
    assert after.decrypt(rotated, purpose=Purpose.REFRESH_TOKEN, row=ROW) == TOKEN
    # The new ciphertext needs the new key: a process still on the old ring cannot read it.
    with pytest.raises(VaultError):
        before.decrypt(rotated, purpose=Purpose.REFRESH_TOKEN, row=ROW)


def test_empty_key_ring_is_refused() -> None:
    with pytest.raises(Exception, match="No vault key"):
        Vault([])


def test_key_file_is_owner_only_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "vault-keys.json"
    first = ensure_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_key_file(path) == first
    new = add_primary_key(path)
    ring = read_key_file(path)
    assert [key.kid for key in ring] == [new.kid, first[0].kid]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_key_file(path, ring[:1])
    assert read_key_file(path) == ring[:1]
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_vault_rereads_key_file_for_a_new_key_id(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    ensure_key_file(path)
    running = Vault.from_settings(Settings.from_env({"SYNCSVC_VAULT_KEY_FILE": str(path)}))
    add_primary_key(path)
    rotated = Vault.from_settings(Settings.from_env({"SYNCSVC_VAULT_KEY_FILE": str(path)}))
    sealed = rotated.encrypt(TOKEN, purpose=Purpose.REFRESH_TOKEN, row=ROW)
    assert running.decrypt(sealed, purpose=Purpose.REFRESH_TOKEN, row=ROW) == TOKEN
    assert running.primary_kid == rotated.primary_kid


def test_key_ring_formats_as_the_environment_value() -> None:
    ring = (generate_key("a"), generate_key("b"))
    parsed = Settings.from_env({"SYNCSVC_VAULT_KEYS": format_key_ring(ring)}).vault_keys
    assert parsed == ring
    assert "key=" not in repr(ring[0])
