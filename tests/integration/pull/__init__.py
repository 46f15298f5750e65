"""Resource pull against the sandbox EHR: helpers shared by the pull tests.

``StoredTokens`` is the token source the tests hand to ``pull_connection``: it reads the stored
access token before each request and, when forced, refreshes for real at the sandbox's token
endpoint and stores the result first (the order the refresh module follows). ``MintedTokens``
hands out tokens minted by the sandbox's own signer, for grants an EHR would not issue on request
(a token of another host, a token narrower than the recorded grant).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from sqlalchemy import select

from syncsvc.db.models.connections import Connection, Tenant
from syncsvc.db.models.records import Resource
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.smart.oauth import refresh_tokens
from syncsvc.sync.context import SyncContext
from syncsvc.sync.credentials import load_tokens, save_tokens
from syncsvc.sync.tenant_config import client_credentials
from tests.integration.sandbox.tokens import mint_access_token

#: The sandbox admin API takes changes as JSON only (no page can send that cross-origin).
JSON = {"Content-Type": "application/json"}

NANCY = "12724066"
WILMA = "12742400"


@dataclass
class StoredTokens:
    """A token source over a connection's stored credentials, counting forced refreshes."""

    ctx: SyncContext
    connection: Connection
    tenant: Tenant
    forced: int = 0
    calls: int = 0
    #: Runs before every unforced call with the call's number (1-based): tests move clocks here.
    before_call: Callable[[int], Awaitable[None]] | None = None

    async def __call__(self, force: bool) -> str:
        async with self.ctx.sessionmaker() as session:
            tokens = await load_tokens(session, self.ctx.vault, self.connection.id)
        assert tokens is not None
        if not force:
            self.calls += 1
            if self.before_call is not None:
                await self.before_call(self.calls)
            assert tokens.access_token is not None
            return tokens.access_token
        self.forced += 1
        assert tokens.refresh_token is not None
        response = await refresh_tokens(
            self.ctx.http,
            token_endpoint=self.connection.token_endpoint,
            refresh_token=tokens.refresh_token,
            credentials=client_credentials(self.ctx.vault, self.tenant),
            clock=self.ctx.clock,
        )
        async with self.ctx.sessionmaker.begin() as session:
            saved = await save_tokens(
                session,
                self.ctx.vault,
                self.connection.id,
                response,
                previous=tokens,
                now=self.ctx.now(),
            )
        assert saved.access_token is not None
        return saved.access_token


@dataclass
class MintedTokens:
    """A token source handing out one minted token (and a fresh one when forced)."""

    sandbox: RunningSandbox
    sandbox_tenant: str
    patient_id: str
    scopes: str
    host: str | None = None
    forced: int = 0
    tokens: list[str] = field(default_factory=list)

    async def __call__(self, force: bool) -> str:
        if force:
            self.forced += 1
        if force or not self.tokens:
            self.tokens.append(
                mint_access_token(
                    self.sandbox, self.sandbox_tenant, self.patient_id, self.scopes, host=self.host
                )
            )
        return self.tokens[-1]


class SandboxAdmin:
    """The sandbox's admin API over HTTP."""

    def __init__(self, sandbox: RunningSandbox, http: aiohttp.ClientSession) -> None:
        self.sandbox = sandbox
        self.http = http

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        data = orjson.dumps(body) if body is not None else None
        async with self.http.request(
            method, f"{self.sandbox.origin}/admin/{path}", data=data, headers=JSON
        ) as response:
            raw = await response.read()
            assert response.status < 300, raw
            return orjson.loads(raw) if raw else None

    async def ids(self, tenant: str, patient: str, resource_type: str) -> set[str]:
        listed = await self.call("GET", f"tenants/{tenant}/patients/{patient}/{resource_type}")
        return {item["id"] for item in listed}

    async def faults(self, tenant: str, faults: list[dict[str, Any]]) -> None:
        await self.call("PUT", f"tenants/{tenant}/faults", faults)

    async def requests(self, since: int = 0) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = await self.call("GET", f"requests?since={since}")
        return entries

    async def advance_clock(self, seconds: float) -> None:
        await self.call("POST", "clock/advance", {"seconds": seconds})


async def stored(ctx: SyncContext, connection_id: str) -> dict[tuple[str, str], Resource]:
    """Every stored resource of a connection by (type, id)."""
    async with ctx.sessionmaker() as session:
        rows = await session.scalars(
            select(Resource).where(Resource.connection_id == connection_id)
        )
        return {(row.resource_type, row.resource_id): row for row in rows}


def ids_of(rows: dict[tuple[str, str], Resource], resource_type: str) -> set[str]:
    """The ids of one type among ``rows``."""
    return {rid for (rtype, rid) in rows if rtype == resource_type}
