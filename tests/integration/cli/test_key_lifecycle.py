"""Key lifecycle: a running ``serve`` follows a rotation; retiring keys; proving every key."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db.models.connections import Credential, LaunchAttempt
from syncsvc.sandbox.patient import ScriptedPatient
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.settings import Settings, read_key_file
from syncsvc.vault import Vault, add_primary_key, ensure_key_file, generate_key, key_id_of
from tests.fixtures.sandbox import CERNER_TENANT, GENERIC_TENANT
from tests.integration.cli.runner import ROOT, environment, syncsvc
from tests.integration.connected import register_and_connect, register_sandbox_tenant

Sessionmaker = async_sessionmaker[AsyncSession]
START_TIMEOUT_SECONDS = 60
API_KEY = "lifecycle-key"


def _key_file_env(settings: Settings, key_file: Path) -> dict[str, str]:
    env = environment(settings)
    del env["SYNCSVC_VAULT_KEYS"]
    env["SYNCSVC_VAULT_KEY_FILE"] = str(key_file)
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def _serving(env: dict[str, str], port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    """``syncsvc serve`` as a real process, up and answering, stopped on the way out."""
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "syncsvc", "serve", "--no-sync", "--port", str(port),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as probe:
            for _ in range(START_TIMEOUT_SECONDS * 10):
                try:
                    async with probe.get(f"http://127.0.0.1:{port}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                pytest.fail("syncsvc serve did not come up")
        yield server
    finally:
        if server.returncode is None:
            server.terminate()
        await asyncio.wait_for(server.wait(), 15)


async def _launch_kid(
    origin: str, sandbox: RunningSandbox, sessionmaker: Sessionmaker, http: aiohttp.ClientSession
) -> str:
    """Start one launch through the running service; the key id of its stored verifier."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"user_id": f"user-{secrets.token_hex(4)}", "tenant": "generic"}
    async with http.post(f"{origin}/api/v1/connect-links", json=body, headers=headers) as made:
        assert made.status == 201, await made.text()
        link = (await made.json())["url"]
    async with ScriptedPatient(username="nancysmart") as patient:
        stopped = await patient.connect(link, stop_before=sandbox.urls(GENERIC_TENANT).authorize)
    assert stopped.url.startswith(sandbox.urls(GENERIC_TENANT).authorize)
    async with sessionmaker() as session:
        [attempt] = await session.scalars(
            select(LaunchAttempt).where(LaunchAttempt.user_id == body["user_id"])
        )
    return key_id_of(attempt.code_verifier_enc)


async def test_a_running_serve_writes_under_the_new_key_after_a_rotation(
    settings: Settings,
    sessionmaker: Sessionmaker,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "keys.json"
    (first,) = ensure_key_file(key_file)
    await register_sandbox_tenant(
        sessionmaker, Vault((first,)), http, sandbox, GENERIC_TENANT, name="generic"
    )
    port = _free_port()
    origin = f"http://127.0.0.1:{port}"
    env = _key_file_env(settings.replace(public_url=origin), key_file)
    env["SYNCSVC_API_KEYS"] = API_KEY
    async with _serving(env, port) as server:
        assert await _launch_kid(origin, sandbox, sessionmaker, http) == first.kid

        rotated = await syncsvc(None, "keys", "rotate", env=env)
        assert rotated.code == 0, rotated.stderr
        second = read_key_file(key_file)[0].kid
        assert second != first.kid
        # The running process writes its next ciphertext under the new primary.
        assert await _launch_kid(origin, sandbox, sessionmaker, http) == second

        # A key written to the file and announced by SIGHUP: taken at once, the process lives.
        third = add_primary_key(key_file).kid
        server.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.2)
        assert await _launch_kid(origin, sandbox, sessionmaker, http) == third
        assert server.returncode is None

        # Retiring: refused while ciphertexts are under the key, then done once they are not.
        refused = await syncsvc(None, "keys", "retire", second, env=env)
        assert refused.code == 1
        assert "still under" in refused.stderr
        assert second in {key.kid for key in read_key_file(key_file)}
        primary = await syncsvc(None, "keys", "retire", third, env=env)
        assert primary.code == 2
        assert "primary" in primary.stderr
        again = await syncsvc(None, "keys", "rotate", "--reencrypt-only", env=env)
        assert again.code == 0, again.stderr
        retired = await syncsvc(None, "keys", "retire", second, env=env)
        assert retired.code == 0, retired.stderr
        assert [key.kid for key in read_key_file(key_file)] == [third, first.kid]
        # The running service still launches, under the primary, with the smaller ring.
        assert await _launch_kid(origin, sandbox, sessionmaker, http) == third
        status = await syncsvc(None, "keys", "status", env=env)
        assert status.code == 0, status.stdout
        assert f"{third}\tprimary\t4 ciphertexts\tproven: 3 of 3" in status.stdout
        assert second not in status.stdout


async def test_status_proves_each_key_and_names_wrong_key_bytes(
    settings: Settings,
    sessionmaker: Sessionmaker,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "keys.json"
    (first,) = ensure_key_file(key_file)
    # Three ciphertexts under the first key: client secret, refresh and access token.
    _, connection = await register_and_connect(
        sessionmaker, Vault((first,)), http, sandbox, CERNER_TENANT, confidential=True
    )
    add_primary_key(key_file)
    env = _key_file_env(settings, key_file)
    good = await syncsvc(None, "keys", "status", env=env)
    assert good.code == 0, good.stdout
    assert f"{first.kid}\told\t3 ciphertexts\tproven: 3 of 3 sample ciphertexts decrypt" in (
        good.stdout
    )
    assert "unproven: no ciphertext under it" in good.stdout  # the new primary

    # The operator restored the old key from a bad copy: other bytes under the same id.
    document = json.loads(key_file.read_text())
    document["keys"][first.kid] = generate_key().encoded()
    key_file.write_text(json.dumps(document))
    wrong = await syncsvc(None, "keys", "status", env=env)
    assert wrong.code == 1
    assert f"{first.kid}\told\t3 ciphertexts\tWRONG KEY BYTES: none of 3" in wrong.stdout

    # With the right bytes back, one altered row is told apart from a wrong key.
    document["keys"][first.kid] = first.encoded()
    key_file.write_text(json.dumps(document))
    async with sessionmaker.begin() as session:
        stored = await session.scalar(
            select(Credential.access_token_enc).where(Credential.connection_id == connection.id)
        )
        assert stored is not None
        await session.execute(
            update(Credential)
            .where(Credential.connection_id == connection.id)
            .values(access_token_enc=stored[:-4] + ("AAAA" if stored[-4:] != "AAAA" else "BBBB"))
        )
    altered = await syncsvc(None, "keys", "status", env=env)
    assert altered.code == 1
    assert "1 of 3 sample ciphertexts do not decrypt (the key is right" in altered.stdout
