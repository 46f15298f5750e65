"""``syncsvc sandbox`` as a real process: its banner, its FHIR base, and ``--config FILE``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
import pytest

from syncsvc.sandbox.config import default_config

ROOT = Path(__file__).resolve().parents[3]
BANNER_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 10.0
REDIRECT = "http://127.0.0.1:9/callback"


def free_port() -> int:
    """A loopback port that was free a moment ago (the sandbox binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def sandbox_process(*args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m syncsvc sandbox ARGS`` running until the block exits (then terminated)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "syncsvc",
        "sandbox",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), EXIT_TIMEOUT_S)
            except TimeoutError:
                process.kill()
                await process.wait()


async def read_banner(process: asyncio.subprocess.Process, last_line: str) -> str:
    """Standard output up to and including the line containing ``last_line`` (bounded wait)."""
    assert process.stdout is not None
    lines: list[str] = []

    async def collect() -> None:
        while True:
            raw = await process.stdout.readline()  # type: ignore[union-attr]
            if not raw:
                assert process.stderr is not None
                error = (await process.stderr.read()).decode(errors="replace")
                pytest.fail(f"sandbox exited before its banner: {''.join(lines)}{error}")
            lines.append(raw.decode())
            if last_line in lines[-1]:
                return

    await asyncio.wait_for(collect(), BANNER_TIMEOUT_S)
    return "".join(lines)


async def test_sandbox_command_prints_tenants_bases_and_clients(tmp_path: Path) -> None:
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    config = default_config()

    async with sandbox_process("--port", str(port), "--redirect-uri", REDIRECT) as process:
        banner = await read_banner(process, "login 'timmysmart'")

        assert f"Sandbox EHR listening on {origin}" in banner
        assert f"  FHIR base  {origin}/r4/{config.tenants[0].id}\n" in banner
        assert f"  FHIR base  {origin}/epic/epic-sandbox/api/FHIR/R4\n" in banner
        assert f"  FHIR base  {origin}/fhir/generic\n" in banner
        for tenant in config.tenants:
            assert f"Tenant {tenant.name}\n" in banner
            assert f"  id         {tenant.id}  (vendor profile: {tenant.vendor}" in banner
        assert (
            f"  authorize  {origin}/tenants/{config.tenants[0].id}"
            "/protocols/oauth2/profiles/smart-v1/personas/patient/authorize\n"
        ) in banner
        assert "Client registrations (sandbox-only credentials)\n" in banner
        assert "  syncsvc-public  (public; all tenants)\n" in banner
        # The sandbox's own demo credentials are printed: a developer needs them to register.
        assert (
            "  syncsvc-confidential  (client_secret_basic; secret 'sandbox-secret'; all tenants)\n"
        ) in banner
        assert f"    redirect {REDIRECT}\n" in banner
        assert "login 'nancysmart', password 'portal'" in banner

        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.get(f"{origin}/r4/{config.tenants[0].id}/metadata") as response,
        ):
            statement = await response.json(content_type=None)
        assert response.status == 200
        assert statement["resourceType"] == "CapabilityStatement"


def _config_file(tmp_path: Path) -> Path:
    """A one-tenant configuration that differs from the built-in one in every visible way."""
    raw: dict[str, Any] = {
        "seed": 7,
        "tenants": [
            {
                "id": "acme-clinic",
                "name": "Acme Clinic (from a file)",
                "vendor": "cerner",
                "host": "fhir-acme.example",
                "policy": {"access_token_lifetime": 300, "auto_approve_patient": "p-1"},
                "patients": [
                    {
                        "id": "p-1",
                        "given": "Ada",
                        "family": "Lovelace",
                        "username": "ada",
                        "sizes": {"Observation": 3},
                    }
                ],
            }
        ],
        "clients": [
            {"client_id": "file-app", "auth": "public", "redirect_uris": [REDIRECT]},
        ],
    }
    path = tmp_path / "sandbox.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


async def test_sandbox_command_serves_a_json_config_file(tmp_path: Path) -> None:
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    base = f"{origin}/r4/acme-clinic"
    prefix = f"{origin}/tenants/acme-clinic"

    async with sandbox_process("--port", str(port), "--config", str(_config_file(tmp_path))) as p:
        banner = await read_banner(p, "login 'ada'")

        assert "Tenant Acme Clinic (from a file)\n" in banner
        assert f"  FHIR base  {base}\n" in banner
        assert "  tokens     300s access, refresh mode none\n" in banner
        assert "  auto-approves patient p-1 (no login page)\n" in banner
        assert "  file-app  (public; all tenants)\n" in banner
        assert "syncsvc-public" not in banner
        assert "epic-sandbox" not in banner

        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=10), cookie_jar=aiohttp.DummyCookieJar()
        ) as http:
            # Cerner's documented defaults still apply under the file's overrides.
            async with http.get(f"{base}/.well-known/smart-configuration") as response:
                discovery = await response.json(content_type=None)
            assert discovery["token_endpoint"] == (
                f"{prefix}/hosts/fhir-acme.example/protocols/oauth2/profiles/smart-v1/token"
            )
            assert "code_challenge_methods_supported" not in discovery

            verifier = "v" * 64
            challenge = (
                base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
                .rstrip(b"=")
                .decode()
            )
            query = {
                "response_type": "code",
                "client_id": "file-app",
                "redirect_uri": REDIRECT,
                "scope": "launch/patient patient/Observation.read",
                "state": "s-1",
                "aud": base,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
            async with http.get(
                f"{discovery['authorization_endpoint']}?{urlencode(query)}", allow_redirects=False
            ) as response:
                assert response.status == 302
                code = dict(parse_qsl(urlsplit(response.headers["Location"]).query))["code"]
            form = {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT,
                "code_verifier": verifier,
                "client_id": "file-app",
            }
            async with http.post(discovery["token_endpoint"], data=form) as response:
                tokens = await response.json()
            assert response.status == 200, tokens
            assert tokens["expires_in"] == 300
            assert tokens["patient"] == "p-1"

            headers = {"Authorization": f"Bearer {tokens['access_token']}"}
            async with http.get(f"{base}/Observation?patient=p-1", headers=headers) as response:
                bundle = await response.json(content_type=None)
            assert response.status == 200
            assert bundle["total"] == 3


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("{not json", "Expecting property name"),
        ('{"tenants": [{"id": "t", "name": "T", "colour": "red"}], "clients": []}', "colour"),
        ('{"tenants": [{"id": "t", "name": "T", "vendor": "meditech"}], "clients": []}', "vendor"),
        ('{"tenants": [], "clients": []}', "tenants"),
    ],
)
async def test_a_bad_config_file_is_reported_without_a_traceback(
    tmp_path: Path, content: str, complaint: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")

    async with sandbox_process("--port", str(free_port()), "--config", str(path)) as process:
        _, stderr = await asyncio.wait_for(process.communicate(), BANNER_TIMEOUT_S)

    message = stderr.decode()
    assert process.returncode == 2
    assert complaint in message
    assert "Traceback" not in message
