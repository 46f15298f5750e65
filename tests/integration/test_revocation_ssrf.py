"""A revocation endpoint from a stored discovery document is checked before a token goes there.

A remote tenant discovered before the endpoint rules tightened may still hold a document whose
revocation endpoint is on this machine (or the operator's network). Disconnecting a patient must
not then send their refresh token there, neither inline nor from the queue: the revocation ends
with a recorded reason and no request. The "internal service" is a real loopback HTTP server
that records every request it gets.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db import disconnect_repo, repo
from syncsvc.db.columns import new_id
from syncsvc.db.models.activity import Event, PendingRevocation
from syncsvc.db.models.connections import Connection, Tenant
from syncsvc.lifecycle.disconnect import disconnect_connection
from syncsvc.lifecycle.revocations import retry_pending, token_purpose
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.settings import Settings
from syncsvc.sync.context import SyncContext
from syncsvc.sync.credentials import load_tokens
from syncsvc.sync.tenant_config import revocation_endpoint
from syncsvc.vault import Vault
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.connected import register_and_connect

Sessionmaker = async_sessionmaker[AsyncSession]


@dataclass
class Internal:
    """An internal HTTP service on loopback that records the bodies it receives."""

    origin: str = ""
    bodies: list[bytes] = field(default_factory=list)


@pytest.fixture
async def internal() -> AsyncIterator[Internal]:
    state = Internal()

    async def record(request: web.Request) -> web.Response:
        state.bodies.append(await request.read())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.origin = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield state
    finally:
        await runner.cleanup()


async def _remote_with_internal_revocation(
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    internal: Internal,
) -> tuple[Tenant, Connection, str]:
    """A connected patient whose tenant is remote but whose stored endpoints are internal."""
    tenant, connection = await register_and_connect(
        sessionmaker, vault, http, sandbox, GENERIC_TENANT
    )
    async with sessionmaker.begin() as session:
        row = await repo.get_connection(session, connection.id)
        stored = await repo.get_tenant(session, tenant.id)
        assert row is not None
        assert stored is not None
        # What a hostile document said before the rules: token and revocation on this machine.
        stored.fhir_base = "https://ehr.example/fhir"
        stored.endpoints = {
            **(stored.endpoints or {}),
            "revocation_endpoint": f"{internal.origin}/revoke",
        }
        row.fhir_base = "https://ehr.example/fhir"
        row.token_endpoint = f"{internal.origin}/token"
    refresh = await _refresh_token(sessionmaker, vault, connection.id)
    return stored, row, refresh


async def _refresh_token(sessionmaker: Sessionmaker, vault: Vault, connection_id: str) -> str:
    async with sessionmaker() as session:
        tokens = await load_tokens(session, vault, connection_id)
    assert tokens is not None
    assert tokens.refresh_token
    return tokens.refresh_token


async def _revocation_events(sessionmaker: Sessionmaker, connection_id: str) -> list[Event]:
    async with sessionmaker() as session:
        rows = await session.scalars(
            select(Event).where(Event.connection_id == connection_id, Event.kind == "revocation")
        )
        return list(rows)


async def test_disconnect_never_sends_the_token_to_a_stored_internal_revocation_endpoint(
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    internal: Internal,
) -> None:
    tenant, connection, refresh = await _remote_with_internal_revocation(
        sessionmaker, vault, http, sandbox, internal
    )
    ctx = SyncContext(settings, sessionmaker, vault, http)
    result = await disconnect_connection(ctx, connection.id, by="operator", erase=False)
    assert internal.bodies == []
    assert revocation_endpoint(tenant, connection.token_endpoint) is None
    assert result.revocation == "refused"
    assert result.tokens_deleted
    [event] = await _revocation_events(sessionmaker, connection.id)
    assert (event.outcome, event.error_class) == ("failed", "endpoint_refused")
    assert event.detail == "not sent: the revocation endpoint is on this machine (loopback)"
    assert refresh not in (event.detail or "")
    async with sessionmaker() as session:
        assert list(await session.scalars(select(PendingRevocation))) == []


async def test_a_queued_revocation_to_an_internal_endpoint_is_given_up_unsent(
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    internal: Internal,
) -> None:
    """A row queued before the check existed (or by an older release) is checked when claimed."""
    tenant, connection, refresh = await _remote_with_internal_revocation(
        sessionmaker, vault, http, sandbox, internal
    )
    revocation_id = new_id()
    now = dt.datetime.now(dt.UTC)
    async with sessionmaker.begin() as session:
        await disconnect_repo.add_pending_revocation(
            session,
            revocation_id=revocation_id,
            tenant_id=tenant.id,
            connection_id=connection.id,
            revocation_endpoint=f"{internal.origin}/revoke",
            token_enc=vault.encrypt(
                refresh, purpose=token_purpose("refresh_token"), row=revocation_id
            ),
            token_type_hint="refresh_token",
            now=now - dt.timedelta(seconds=1),
        )
    report = await retry_pending(SyncContext(settings, sessionmaker, vault, http))
    assert internal.bodies == []
    assert (report.claimed, report.revoked, report.given_up) == (1, 0, 1)
    [event] = await _revocation_events(sessionmaker, connection.id)
    assert (event.outcome, event.error_class) == ("failed", "endpoint_refused")
    assert event.detail == "not sent: the revocation endpoint is on this machine (loopback)"
    async with sessionmaker() as session:
        assert await session.get(PendingRevocation, revocation_id) is None
