"""Builders for syncsvc rows that point at the running sandbox: tenants and live connections.

``connect_patient`` makes a connection the way a finished launch would leave it (binding, granted
scopes, encrypted tokens, due for refresh and sync now) but obtains the tokens by driving the
sandbox's authorization server directly, so sync tests need not go through the web flow.
"""

from __future__ import annotations

import datetime as dt

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db import repo
from syncsvc.db.models.connections import Connection, Tenant
from syncsvc.directory.tenants import TenantSpec, register_tenant
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.smart.oauth import parse_token_response
from syncsvc.sync.credentials import save_tokens
from syncsvc.sync.tenant_config import (
    DEFAULT_RESOURCE_TYPES,
    smart_configuration,
)
from syncsvc.sync.type_support import scopes_to_request
from syncsvc.vault import Vault
from tests.fixtures.sandbox import TEST_REDIRECT_URI
from tests.integration.sandbox.authflow import obtain_tokens

SANDBOX_SECRET = "sandbox-secret"


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


async def register_sandbox_tenant(
    sessionmaker: async_sessionmaker[AsyncSession],
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    sandbox_tenant: str,
    *,
    name: str | None = None,
    confidential: bool = False,
    resource_types: tuple[str, ...] = DEFAULT_RESOURCE_TYPES,
) -> Tenant:
    """Register a sandbox tenant with syncsvc (real discovery over HTTP)."""
    config = sandbox.tenant(sandbox_tenant)
    spec = TenantSpec(
        name=name or config.vendor,
        display_name=config.name,
        vendor=config.vendor,
        fhir_base=sandbox.urls(sandbox_tenant).fhir_base,
        client_id="syncsvc-confidential" if confidential else "syncsvc-public",
        auth_method="client_secret_basic" if confidential else "public",
        client_secret=SANDBOX_SECRET if confidential else None,
        redirect_uri=TEST_REDIRECT_URI,
        resource_types=resource_types,
    )
    return await register_tenant(sessionmaker, vault, http, spec, now=utcnow())


async def connect_patient(
    sessionmaker: async_sessionmaker[AsyncSession],
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    tenant: Tenant,
    *,
    sandbox_tenant: str,
    patient_id: str = "12724066",
    user_id: str = "user-1",
    scopes: list[str] | None = None,
) -> Connection:
    """An active connection with stored tokens, due for refresh and sync now."""
    config = smart_configuration(tenant)
    assert config is not None
    requested = scopes or scopes_to_request(tenant, config)
    confidential = tenant.auth_method != "public"
    body = await obtain_tokens(
        http,
        sandbox,
        sandbox_tenant,
        client_id=tenant.client_id,
        client_secret=SANDBOX_SECRET if confidential else None,
        scope=" ".join(requested),
        patient_id=patient_id,
    )
    tokens = parse_token_response(body)
    now = utcnow()
    async with sessionmaker.begin() as session:
        connection = await repo.create_connection(
            session,
            tenant_id=tenant.id,
            user_id=user_id,
            patient_id=tokens.patient or patient_id,
            fhir_base=tenant.fhir_base,
            aud=tenant.fhir_base,
            issuer=tenant.issuer,
            token_endpoint=config.token_endpoint,
            client_id=tenant.client_id,
            requested_scopes=requested,
            granted_scopes=list(tokens.scopes) if tokens.scope_returned else requested,
            now=now,
            next_refresh_at=now,
            next_sync_at=now,
        )
        await save_tokens(session, vault, connection.id, tokens, previous=None, now=now)
    return connection


async def register_and_connect(
    sessionmaker: async_sessionmaker[AsyncSession],
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    sandbox_tenant: str,
    *,
    confidential: bool = False,
) -> tuple[Tenant, Connection]:
    """Register a sandbox tenant and connect its default patient (see :func:`connect_patient`)."""
    tenant = await register_sandbox_tenant(
        sessionmaker, vault, http, sandbox, sandbox_tenant, confidential=confidential
    )
    connection = await connect_patient(
        sessionmaker, vault, http, sandbox, tenant, sandbox_tenant=sandbox_tenant
    )
    return tenant, connection
