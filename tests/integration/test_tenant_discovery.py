"""A tenant's discovery document is cached with a TTL and survives the EHR's metadata outages."""

from __future__ import annotations

import datetime as dt

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db import repo
from syncsvc.directory.tenants import (
    DISCOVERY_TTL,
    TenantSpec,
    fresh_configuration,
    register_tenant,
)
from syncsvc.errors import ConfigError, DiscoveryError
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.vault import Vault
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.connected import register_sandbox_tenant

Sessionmaker = async_sessionmaker[AsyncSession]


def _discovery_requests(sandbox: RunningSandbox) -> int:
    return sum(
        1
        for entry in sandbox.state.request_log
        if entry.url.endswith(("/.well-known/smart-configuration", "/metadata"))
    )


async def test_fresh_document_is_reused_and_a_stale_one_refetched(
    sessionmaker: Sessionmaker, vault: Vault, http: aiohttp.ClientSession, sandbox: RunningSandbox
) -> None:
    tenant = await register_sandbox_tenant(sessionmaker, vault, http, sandbox, GENERIC_TENANT)
    assert tenant.discovery_fetched_at is not None
    seen = _discovery_requests(sandbox)
    soon = tenant.discovery_fetched_at + DISCOVERY_TTL / 2
    config = await fresh_configuration(sessionmaker, http, tenant, now=soon)
    assert config.token_endpoint == sandbox.urls(GENERIC_TENANT).token
    assert _discovery_requests(sandbox) == seen  # served from the stored document

    later = tenant.discovery_fetched_at + DISCOVERY_TTL + dt.timedelta(minutes=1)
    await fresh_configuration(sessionmaker, http, tenant, now=later)
    assert _discovery_requests(sandbox) > seen
    async with sessionmaker() as session:
        stored = await repo.get_tenant(session, tenant.id)
    assert stored is not None
    assert stored.discovery_fetched_at == later


async def test_failed_rediscovery_keeps_the_last_good_document_and_records_why(
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
) -> None:
    tenant = await register_sandbox_tenant(sessionmaker, vault, http, sandbox, GENERIC_TENANT)
    assert tenant.discovery_fetched_at is not None
    # The EHR's metadata goes away (a base that no longer answers discovery).
    later = tenant.discovery_fetched_at + DISCOVERY_TTL * 2
    tenant.fhir_base = tenant.fhir_base + "-gone"
    config = await fresh_configuration(sessionmaker, http, tenant, now=later)
    assert config.token_endpoint == sandbox.urls(GENERIC_TENANT).token
    async with sessionmaker() as session:
        stored = await repo.get_tenant(session, tenant.id)
    assert stored is not None
    assert stored.discovery_error is not None
    assert "publishes neither" in stored.discovery_error

    stored.endpoints = {}
    stored.fhir_base = tenant.fhir_base
    with pytest.raises(DiscoveryError):
        await fresh_configuration(sessionmaker, http, stored, now=later)


async def test_a_remote_base_without_https_is_refused(
    sessionmaker: Sessionmaker, vault: Vault, http: aiohttp.ClientSession
) -> None:
    spec = TenantSpec(
        name="plain",
        fhir_base="http://fhir.example.org/r4/tenant",
        client_id="c",
        redirect_uri="https://sync.example.org/callback",
    )
    with pytest.raises(ConfigError, match="must use https"):
        await register_tenant(sessionmaker, vault, http, spec, now=dt.datetime.now(dt.UTC))


async def test_redirect_uris_new_kept_and_never_another_tenants(
    sessionmaker: Sessionmaker, vault: Vault, http: aiohttp.ClientSession, sandbox: RunningSandbox
) -> None:
    base = sandbox.urls(GENERIC_TENANT).fhir_base
    now = dt.datetime.now(dt.UTC)
    public = "https://sync.example.org"

    def spec(redirect_uri: str | None) -> TenantSpec:
        return TenantSpec(name="clinic", fhir_base=base, client_id="c", redirect_uri=redirect_uri)

    # A new tenant gets its own callback; an existing one keeps what its EHR registration holds.
    created = await register_tenant(
        sessionmaker, vault, http, spec(None), now=now, public_url=public
    )
    assert created.redirect_uri == "https://sync.example.org/callback/clinic"
    legacy = await register_tenant(
        sessionmaker, vault, http, spec(f"{public}/callback"), now=now, public_url=public
    )
    assert legacy.redirect_uri == f"{public}/callback"
    kept = await register_tenant(sessionmaker, vault, http, spec(None), now=now, public_url=public)
    assert kept.redirect_uri == f"{public}/callback"
    # Another tenant's own callback would be shared with it: refused.
    with pytest.raises(ConfigError, match="callback"):
        await register_tenant(
            sessionmaker, vault, http, spec(f"{public}/callback/other"), now=now, public_url=public
        )
