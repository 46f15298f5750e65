"""No token, secret or key is stored or logged in plaintext anywhere during a full launch."""

from __future__ import annotations

import io
from pathlib import Path

import aiohttp
import asyncpg
from sqlalchemy.engine import make_url

from tests.integration.connected import SANDBOX_SECRET
from tests.integration.web.flows import Flow, stored_tokens


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


async def _launch_everything(flow: Flow, private_key: str) -> tuple[list[str], list[str]]:
    """Connect two patients (client secret and private key); return secrets and URLs seen."""
    visited = await flow.connect_confidential_clients(private_key)
    secrets = [SANDBOX_SECRET, private_key.splitlines()[1], *await stored_tokens(flow.service)]
    assert len(secrets) >= 5
    return secrets, visited


async def test_database_holds_no_plaintext_token_or_secret(
    flow: Flow, pkjwt_private_key: str, db_url: str
) -> None:
    secrets, _ = await _launch_everything(flow, pkjwt_private_key)
    raw = await _raw_database_text(db_url)
    # The scan really sees the rows: stored values that are not secret are found in it.
    for connection in await flow.connections():
        assert connection.id in raw
        assert connection.user_id in raw
    for secret in secrets:
        assert secret not in raw


async def test_logs_of_a_full_launch_hold_no_token_code_or_state(
    captured_logs: io.StringIO, flow: Flow, pkjwt_private_key: str
) -> None:
    secrets, visited = await _launch_everything(flow, pkjwt_private_key)
    callbacks = [aiohttp.helpers.URL(u) for u in visited if u.startswith(flow.service.callback)]
    assert len(callbacks) == 2
    for callback in callbacks:
        secrets += [callback.query["code"], callback.query["state"]]
    links = [aiohttp.helpers.URL(u).query["link"] for u in visited if "/connect?link=" in u]
    assert len(links) == 2
    secrets += links
    text = captured_logs.getvalue()
    assert "launch_completed" in text  # the logs were really captured
    assert "/callback" in text  # including the access log lines of the callback
    for secret in secrets:
        assert secret not in text
