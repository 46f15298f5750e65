"""The tenant registry and token store, through the builders other sync tests rely on."""

from __future__ import annotations

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db import repo
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.sync.credentials import load_tokens
from syncsvc.sync.tenant_config import client_credentials, smart_configuration
from syncsvc.vault import Vault
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT
from tests.integration.connected import connect_patient, register_sandbox_tenant

Sessionmaker = async_sessionmaker[AsyncSession]


async def test_registered_tenant_holds_discovery_and_a_sealed_secret(
    sessionmaker: Sessionmaker, vault: Vault, http: aiohttp.ClientSession, sandbox: RunningSandbox
) -> None:
    tenant = await register_sandbox_tenant(
        sessionmaker, vault, http, sandbox, CERNER_TENANT, confidential=True
    )
    config = smart_configuration(tenant)
    assert config is not None
    assert config.token_endpoint == sandbox.urls(CERNER_TENANT).token
    assert tenant.client_secret_enc is not None
    assert "sandbox-secret" not in tenant.client_secret_enc
    assert client_credentials(vault, tenant).secret == "sandbox-secret"
    # Registering the same name again updates in place (idempotent import).
    again = await register_sandbox_tenant(
        sessionmaker, vault, http, sandbox, CERNER_TENANT, confidential=False
    )
    assert again.id == tenant.id
    assert again.client_secret_enc is None


async def test_connected_patient_has_tokens_bound_to_its_row(
    sessionmaker: Sessionmaker, vault: Vault, http: aiohttp.ClientSession, sandbox: RunningSandbox
) -> None:
    tenant = await register_sandbox_tenant(sessionmaker, vault, http, sandbox, EPIC_TENANT)
    connection = await connect_patient(
        sessionmaker, vault, http, sandbox, tenant, sandbox_tenant=EPIC_TENANT
    )
    async with sessionmaker() as session:
        tokens = await load_tokens(session, vault, connection.id)
        stored = await repo.get_credentials(session, connection.id)
    assert tokens is not None
    assert stored is not None
    assert tokens.version == 1
    assert tokens.access_token
    assert tokens.access_token not in (stored.access_token_enc or "")
    assert connection.patient_id == "12724066"
    assert connection.fhir_base == sandbox.urls(EPIC_TENANT).fhir_base
