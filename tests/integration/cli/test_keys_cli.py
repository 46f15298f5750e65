"""``syncsvc keys status|rotate``: re-encrypting every stored secret under a new key, for real."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db import repo
from syncsvc.db.rekey import count_by_key_id
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.settings import Settings, read_key_file
from syncsvc.sync.credentials import load_tokens
from syncsvc.sync.tenant_config import client_credentials
from syncsvc.vault import Vault, ensure_key_file, format_key_ring
from tests.fixtures.sandbox import CERNER_TENANT
from tests.integration.cli.runner import environment, syncsvc
from tests.integration.connected import register_and_connect, register_sandbox_tenant

Sessionmaker = async_sessionmaker[AsyncSession]


def _key_file_env(settings: Settings, key_file: Path) -> dict[str, str]:
    env = environment(settings)
    del env["SYNCSVC_VAULT_KEYS"]
    env["SYNCSVC_VAULT_KEY_FILE"] = str(key_file)
    return env


async def test_rotate_with_a_key_file_reencrypts_everything(
    settings: Settings,
    sessionmaker: Sessionmaker,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "keys.json"
    first = ensure_key_file(key_file)
    vault = Vault(first)
    tenant, connection = await register_and_connect(
        sessionmaker, vault, http, sandbox, CERNER_TENANT, confidential=True
    )
    async with sessionmaker() as session:
        before = await count_by_key_id(session)
    assert before == {first[0].kid: 3}  # client secret, refresh token, access token
    env = _key_file_env(settings, key_file)

    status = await syncsvc(None, "keys", "status", env=env)
    assert status.code == 0, status.stderr
    assert f"{first[0].kid}\tprimary\t3 ciphertexts" in status.stdout

    rotated = await syncsvc(None, "keys", "rotate", "--batch-size", "1", env=env)
    assert rotated.code == 0, rotated.stderr
    ring = read_key_file(key_file)
    assert [key.kid for key in ring][1:] == [first[0].kid]
    new_kid = ring[0].kid
    assert f"re-encrypted under {new_kid}" in rotated.stderr
    async with sessionmaker() as session:
        assert await count_by_key_id(session) == {new_kid: 3}
        # Only the new key is needed now: the old one can be retired.
        only_new = Vault(ring[:1])
        tokens = await load_tokens(session, only_new, connection.id)
    assert tokens is not None
    assert tokens.refresh_token
    async with sessionmaker() as session:
        stored_tenant = await repo.get_tenant(session, tenant.id)
    assert stored_tenant is not None
    assert client_credentials(only_new, stored_tenant).secret == "sandbox-secret"

    after = await syncsvc(None, "keys", "status", env=env)
    assert f"{new_kid}\tprimary\t3 ciphertexts" in after.stdout
    assert f"{first[0].kid}\told\t0 ciphertexts" in after.stdout


async def test_rotate_with_environment_keys_hands_over_the_new_ring(
    settings: Settings,
    sessionmaker: Sessionmaker,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
) -> None:
    vault = Vault(settings.vault_keys)
    await register_sandbox_tenant(
        sessionmaker, vault, http, sandbox, CERNER_TENANT, confidential=True
    )
    proposed = await syncsvc(settings, "keys", "rotate")
    assert proposed.code == 0, proposed.stderr
    line = proposed.stdout.strip()
    assert line.startswith("SYNCSVC_VAULT_KEYS=")
    assert "--reencrypt-only" in proposed.stderr
    env = environment(settings) | {"SYNCSVC_VAULT_KEYS": line.partition("=")[2]}
    done = await syncsvc(None, "keys", "rotate", "--reencrypt-only", env=env)
    assert done.code == 0, done.stderr
    new_kid = line.partition("=")[2].split(":", 1)[0]
    async with sessionmaker() as session:
        assert await count_by_key_id(session) == {new_kid: 1}
    # A ciphertext under a key nobody configured any more is reported, with a failing exit.
    missing = environment(settings) | {"SYNCSVC_VAULT_KEYS": format_key_ring(settings.vault_keys)}
    status = await syncsvc(None, "keys", "status", env=missing)
    assert status.code == 1
    assert f"{new_kid}\tMISSING\t1 ciphertexts (cannot be decrypted)" in status.stdout
