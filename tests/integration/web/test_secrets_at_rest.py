"""No token, secret or key is stored or logged in plaintext anywhere during a full launch."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from syncsvc.db.models import Connection
from syncsvc.keys import SESSIONMAKER
from syncsvc.logging import configure_logging
from syncsvc.sandbox.patient import ScriptedPatient
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.sync.credentials import load_tokens
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT
from tests.integration.connected import SANDBOX_SECRET
from tests.integration.web.conftest import RunningService
from tests.integration.web.flows import new_link, register


async def _raw_database_text(db_url: str) -> str:
    """Everything the database holds, as the bytes an attacker with the file would read."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        path = Path(str(url.database))
        files = [path, path.with_name(path.name + "-wal")]
        return "".join(p.read_bytes().decode("latin-1") for p in files if p.exists())
    plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(plain, timeout=5)
    try:
        tables = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        )
        chunks = []
        for row in tables:
            # S608: the table names come from the catalogue, not from input.
            query = f'SELECT t::text AS r FROM "{row["tablename"]}" t'  # noqa: S608
            rows = await connection.fetch(query)
            chunks.extend(r["r"] for r in rows)
        return "\n".join(chunks)
    finally:
        await connection.close()


async def _launch_everything(
    service: RunningService,
    api: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    private_key: str,
) -> tuple[list[str], list[str]]:
    """Connect two patients (client secret and private key); return secrets and URLs seen."""
    await register(service, http, sandbox, CERNER_TENANT, name="cerner", auth="client_secret_basic")
    await register(
        service,
        http,
        sandbox,
        EPIC_TENANT,
        name="epic",
        auth="private_key_jwt",
        private_key=private_key,
    )
    visited: list[str] = []
    for tenant, username in (("cerner", "nancysmart"), ("epic", "wilmasmart")):
        link = await new_link(api, f"user-{tenant}", tenant=tenant)
        async with ScriptedPatient(username=username) as patient:
            page = await patient.connect(link)
            assert page.status == 200, page.body
            visited.extend(patient.visited)
    secrets: list[str] = [SANDBOX_SECRET, private_key.splitlines()[1]]
    async with service.app[SESSIONMAKER]() as session:
        for connection in await session.scalars(select(Connection)):
            tokens = await load_tokens(session, service.vault, connection.id)
            assert tokens is not None
            assert tokens.access_token
            secrets.append(tokens.access_token)
            if tokens.refresh_token:
                secrets.append(tokens.refresh_token)
    assert len(secrets) >= 5
    return secrets, visited


async def test_database_holds_no_plaintext_token_or_secret(
    service: RunningService,
    api: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    pkjwt_private_key: str,
    db_url: str,
) -> None:
    secrets, _ = await _launch_everything(service, api, http, sandbox, pkjwt_private_key)
    raw = await _raw_database_text(db_url)
    assert "connections" in raw or "active" in raw  # the scan really sees the data
    for secret in secrets:
        assert secret not in raw


@pytest.fixture
def captured_logs() -> io.StringIO:
    """Every log line of the test, through syncsvc's real logging configuration."""
    stream = io.StringIO()
    configure_logging(log_format="json", log_level="DEBUG", stream=stream)
    return stream


async def test_logs_of_a_full_launch_hold_no_token_code_or_state(
    captured_logs: io.StringIO,
    service: RunningService,
    api: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    pkjwt_private_key: str,
) -> None:
    try:
        secrets, visited = await _launch_everything(service, api, http, sandbox, pkjwt_private_key)
    finally:
        logging.getLogger().handlers.clear()
    callbacks = [aiohttp.helpers.URL(u) for u in visited if u.startswith(service.callback)]
    assert len(callbacks) == 2
    for callback in callbacks:
        secrets += [callback.query["code"], callback.query["state"]]
    links = [aiohttp.helpers.URL(u).query["link"] for u in visited if "/connect?link=" in u]
    secrets += links
    text = captured_logs.getvalue()
    assert "launch_completed" in text  # the logs were really captured
    assert "/callback" in text  # including the access log lines of the callback
    for secret in secrets:
        assert secret not in text
