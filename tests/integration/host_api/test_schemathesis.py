"""Property-based fuzzing of the documented API (schemathesis) finds no server error.

syncsvc runs as a real ``syncsvc serve`` process; schemathesis reads ``/openapi.json`` and throws
generated valid and invalid requests at every documented operation, with and without data behind
the ids it tries. Any 5xx fails the test with schemathesis's own report.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.settings import Settings
from tests.integration.cli.runner import ROOT, environment
from tests.integration.dbdata import add_connection, add_tenant

Sessionmaker = async_sessionmaker[AsyncSession]
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
START_TIMEOUT_SECONDS = 30.0
RUN_TIMEOUT_SECONDS = 300.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_until_up(url: str) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        for _ in range(int(START_TIMEOUT_SECONDS * 10)):
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    pytest.fail(f"syncsvc serve did not answer {url}")


async def test_fuzzing_the_documented_api_finds_no_server_error(
    settings: Settings, sessionmaker: Sessionmaker, tmp_path: Path
) -> None:
    async with sessionmaker.begin() as session:
        tenant = await add_tenant(session, name="clinic")
        await add_connection(session, tenant, user_id="user-1")
    port = _free_port()
    origin = f"http://127.0.0.1:{port}"
    env = environment(settings.replace(public_url=origin)) | {"SYNCSVC_API_KEYS": "fuzz-key"}
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "syncsvc", "serve", "--no-sync", "--port", str(port),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await _wait_until_up(f"{origin}/openapi.json")
        fuzz = await asyncio.create_subprocess_exec(
            str(SCHEMATHESIS), "run", f"{origin}/openapi.json",
            "--checks", "not_a_server_error",
            "--header", "Authorization: Bearer fuzz-key",
            "--max-examples", "30", "--seed", "20261127",
            # One worker: CPython 3.11 can fail compiling in two threads at once
            # ("AST constructor recursion depth mismatch"), inside schemathesis.
            "--workers", "1",
            "--phases", "examples,coverage,fuzzing",
            # Health checks judge data generation speed, not the API; a loaded CI box trips them.
            "--suppress-health-check", "all",
            "--request-timeout", "30",
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(fuzz.communicate(), RUN_TIMEOUT_SECONDS)
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 10)
    report = out.decode(errors="replace")
    assert fuzz.returncode == 0, report[-6000:]
    assert "API Operations" in report  # the run really read the document
