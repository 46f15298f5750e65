"""Steps the tests of the running service share: register a sandbox tenant, issue links, connect
patients through the real pages, read the connections back and run a sync.

``Flow`` bundles what those steps drive (the service, the host application's client, a plain client
and the sandbox) so that a test asks for one ``flow`` fixture instead of the same four each time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from sqlalchemy import select

from syncsvc.db import repo
from syncsvc.db.models.connections import Connection, Tenant
from syncsvc.directory.tenants import TenantSpec, register_tenant
from syncsvc.sandbox.patient import PageResult, ScriptedPatient
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.sync.context import SyncContext, utcnow
from syncsvc.sync.credentials import load_tokens
from syncsvc.sync.runner import WorkReport, run_due
from syncsvc.web.keys import SERVICES
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT
from tests.integration.connected import SANDBOX_SECRET
from tests.integration.web.service import PKJWT_CLIENT, PKJWT_KEY_ID, RunningService

DEFAULT_TYPES = ("Patient", "Observation", "Condition")


async def register(
    service: RunningService,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    sandbox_tenant: str,
    *,
    name: str,
    auth: str = "public",
    private_key: str | None = None,
    resource_types: tuple[str, ...] = DEFAULT_TYPES,
    redirect_uri: str | None = None,
) -> Tenant:
    """Register a sandbox tenant with the running service, as ``tenants add`` would.

    The redirect URI defaults to the tenant's own ``/callback/{name}``.
    """
    config = sandbox.tenant(sandbox_tenant)
    client_id = {
        "public": "syncsvc-public",
        "client_secret_basic": "syncsvc-confidential",
        "private_key_jwt": PKJWT_CLIENT,
    }[auth]
    spec = TenantSpec(
        name=name,
        display_name=config.name,
        vendor=config.vendor,
        fhir_base=sandbox.urls(sandbox_tenant).fhir_base,
        client_id=client_id,
        auth_method=auth,
        client_secret=SANDBOX_SECRET if auth == "client_secret_basic" else None,
        private_key_pem=private_key,
        key_id=PKJWT_KEY_ID if private_key else None,
        redirect_uri=redirect_uri or service.callback_for(name),
        resource_types=resource_types,
    )
    return await register_tenant(
        service.app[SERVICES].sessionmaker, service.vault, http, spec, now=dt.datetime.now(dt.UTC)
    )


async def new_link(
    api: aiohttp.ClientSession, user_id: str = "user-1", tenant: str | None = None, **extra: Any
) -> str:
    """A connect link URL issued through the host-app API."""
    body: dict[str, Any] = {"user_id": user_id, **extra}
    if tenant is not None:
        body["tenant"] = tenant
    async with api.post("/api/v1/connect-links", json=body) as response:
        assert response.status == 201, await response.text()
        payload = await response.json()
    url: str = payload["url"]
    return url


async def connect_through_pages(
    api: aiohttp.ClientSession,
    username: str,
    *,
    tenant: str,
    user_id: str = "user-1",
    visited: list[str] | None = None,
) -> PageResult:
    """Issue a link for ``user_id`` and walk ``username`` through it to a connected page.

    The URLs the patient's browser went through are appended to ``visited`` when it is given.
    """
    link = await new_link(api, user_id, tenant=tenant)
    async with ScriptedPatient(username=username) as patient:
        page = await patient.connect(link)
        assert page.status == 200, page.body
        if visited is not None:
            visited.extend(patient.visited)
    return page


async def connections(service: RunningService) -> list[Connection]:
    """Every connection row, read fresh, ordered by user."""
    async with service.app[SERVICES].sessionmaker() as session:
        return list(
            await session.scalars(select(Connection).order_by(Connection.user_id, Connection.id))
        )


async def only_connection(service: RunningService) -> Connection:
    """The one connection there is (fails when there is none or more than one)."""
    [connection] = await connections(service)
    return connection


async def stored_tokens(service: RunningService) -> list[str]:
    """Every access and refresh token the service holds, decrypted."""
    found: list[str] = []
    async with service.app[SERVICES].sessionmaker() as session:
        for connection in await session.scalars(select(Connection)):
            tokens = await load_tokens(session, service.vault, connection.id)
            assert tokens is not None
            assert tokens.access_token
            found.append(tokens.access_token)
            if tokens.refresh_token:
                found.append(tokens.refresh_token)
    return found


async def set_status(
    service: RunningService,
    connection_id: str,
    status: str,
    *,
    reason: str | None = None,
    message: str | None = None,
    error_uri: str | None = None,
) -> None:
    """Move a connection to ``status`` as refresh or pull would (the reason defaults to it)."""
    async with service.app[SERVICES].sessionmaker.begin() as session:
        await repo.set_connection_status(
            session,
            connection_id,
            status=status,
            now=utcnow(),
            reason=reason or status,
            message=message,
            error_uri=error_uri,
        )


def sync_context(
    service: RunningService,
    http: aiohttp.ClientSession | None = None,
    clock: Callable[[], dt.datetime] = utcnow,
) -> SyncContext:
    """A sync context on the service's database and vault (and its own outbound client)."""
    return SyncContext(
        settings=service.settings,
        sessionmaker=service.app[SERVICES].sessionmaker,
        vault=service.vault,
        http=http or service.app[SERVICES].http,
        clock=clock,
    )


async def sync_now(service: RunningService) -> WorkReport:
    """Refresh and pull every connection that is due, as the scheduler's tick would."""
    return await run_due(sync_context(service))


@dataclass(frozen=True)
class Flow:
    """The running service, the host application's client, a plain client and the sandbox EHR."""

    service: RunningService
    api: aiohttp.ClientSession
    http: aiohttp.ClientSession
    sandbox: RunningSandbox

    async def register(
        self,
        sandbox_tenant: str,
        *,
        name: str,
        auth: str = "public",
        private_key: str | None = None,
        resource_types: tuple[str, ...] = DEFAULT_TYPES,
        redirect_uri: str | None = None,
    ) -> Tenant:
        """Register a sandbox tenant with the service (see :func:`register`)."""
        return await register(
            self.service,
            self.http,
            self.sandbox,
            sandbox_tenant,
            name=name,
            auth=auth,
            private_key=private_key,
            resource_types=resource_types,
            redirect_uri=redirect_uri,
        )

    async def link(self, user_id: str = "user-1", tenant: str | None = None) -> str:
        """A connect link issued through the host-app API (see :func:`new_link`)."""
        return await new_link(self.api, user_id, tenant=tenant)

    async def connect(
        self,
        username: str,
        *,
        tenant: str,
        user_id: str = "user-1",
        visited: list[str] | None = None,
    ) -> PageResult:
        """Connect ``username`` for ``user_id`` (see :func:`connect_through_pages`)."""
        return await connect_through_pages(
            self.api, username, tenant=tenant, user_id=user_id, visited=visited
        )

    async def connections(self) -> list[Connection]:
        """Every connection row, read fresh."""
        return await connections(self.service)

    async def only_connection(self) -> Connection:
        """The one connection there is."""
        return await only_connection(self.service)

    async def connect_confidential_clients(self, private_key: str) -> list[str]:
        """Connect two patients, one per confidential client kind; the URLs their browsers saw.

        Nancy through Oracle (``cerner``, client secret) as ``user-cerner``, Wilma through Epic
        (``epic``, private_key_jwt signed with ``private_key``) as ``user-epic``.
        """
        await self.register(CERNER_TENANT, name="cerner", auth="client_secret_basic")
        await self.register(
            EPIC_TENANT, name="epic", auth="private_key_jwt", private_key=private_key
        )
        visited: list[str] = []
        for tenant, username in (("cerner", "nancysmart"), ("epic", "wilmasmart")):
            await self.connect(username, tenant=tenant, user_id=f"user-{tenant}", visited=visited)
        return visited
