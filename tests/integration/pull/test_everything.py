"""A first sync through Patient/$everything where a tenant turns it on and its server offers it.

Over real HTTP against the sandbox: the generic tenant advertises the operation, the Epic-shaped
one does not. The record stored is the same as the per-type searches store; a type the operation
returned nothing of, and every type when the operation fails, is searched on its own.
"""

from __future__ import annotations

import pytest

from syncsvc.directory.tenants import TenantSpec, register_tenant
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.smart.scopes import DEFAULT_RESOURCE_TYPES
from syncsvc.sync.context import SyncContext
from syncsvc.sync.pull import pull_connection
from tests.fixtures.sandbox import EPIC_TENANT, GENERIC_TENANT, TEST_REDIRECT_URI
from tests.integration.connected import connect_patient, utcnow

from . import NANCY, SandboxAdmin, StoredTokens, ids_of, stored

EVERYTHING = {"*": {"everything": True}}


async def _connected(
    ctx: SyncContext, sandbox: RunningSandbox, sandbox_tenant: str
) -> StoredTokens:
    config = sandbox.tenant(sandbox_tenant)
    spec = TenantSpec(
        name=config.vendor,
        vendor=config.vendor,
        fhir_base=sandbox.urls(sandbox_tenant).fhir_base,
        client_id="syncsvc-confidential",
        auth_method="client_secret_basic",
        client_secret="sandbox-secret",
        redirect_uri=TEST_REDIRECT_URI,
        plan_overrides=EVERYTHING,
    )
    tenant = await register_tenant(ctx.sessionmaker, ctx.vault, ctx.http, spec, now=utcnow())
    connection = await connect_patient(
        ctx.sessionmaker, ctx.vault, ctx.http, sandbox, tenant, sandbox_tenant=sandbox_tenant
    )
    return StoredTokens(ctx, connection, tenant)


async def _everything_requests(admin: SandboxAdmin) -> list[str]:
    return [e["url"] for e in await admin.requests() if "$everything" in e["url"]]


async def test_a_first_sync_through_everything_stores_the_whole_record(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin
) -> None:
    tokens = await _connected(ctx, sandbox, GENERIC_TENANT)

    summary = await pull_connection(ctx, tokens.connection.id, tokens)

    assert summary.outcome == "ok", summary
    assert set(summary.types) == set(DEFAULT_RESOURCE_TYPES)
    rows = await stored(ctx, tokens.connection.id)
    for resource_type in DEFAULT_RESOURCE_TYPES:
        if resource_type != "Patient":
            upstream = await admin.ids(GENERIC_TENANT, NANCY, resource_type)
            assert ids_of(rows, resource_type) == upstream, resource_type
    assert ids_of(rows, "Patient") == {NANCY}
    log = [e["url"] for e in await admin.requests()]
    pages = [url for url in log if "$everything" in url]
    base = sandbox.urls(GENERIC_TENANT).fhir_base
    assert len(pages) > 1  # paged, by next links under the base
    assert all(url.startswith(f"{base}/Patient/{NANCY}/$everything") for url in pages)
    assert not [url for url in log if "?patient=" in url]  # no per-type search was needed

    # An incremental run searches each type after its watermark instead.
    again = await pull_connection(ctx, tokens.connection.id, tokens)
    assert again.outcome == "ok"
    assert len(await _everything_requests(admin)) == len(pages)


async def test_a_failed_everything_falls_back_to_per_type_searches(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin
) -> None:
    tokens = await _connected(ctx, sandbox, GENERIC_TENANT)
    await admin.faults(GENERIC_TENANT, [{"kind": "status_500", "target": "Patient", "count": 1}])

    summary = await pull_connection(ctx, tokens.connection.id, tokens)

    assert summary.outcome == "ok", summary
    assert {r.status for r in summary.types.values()} == {"ok"}
    assert len(await _everything_requests(admin)) == 1
    rows = await stored(ctx, tokens.connection.id)
    upstream = await admin.ids(GENERIC_TENANT, NANCY, "Observation")
    assert ids_of(rows, "Observation") == upstream


@pytest.mark.parametrize("sandbox_tenant", [EPIC_TENANT])
async def test_everything_is_not_asked_where_the_server_does_not_offer_it(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin, sandbox_tenant: str
) -> None:
    tokens = await _connected(ctx, sandbox, sandbox_tenant)

    summary = await pull_connection(ctx, tokens.connection.id, tokens)

    assert summary.outcome == "ok", summary
    assert await _everything_requests(admin) == []
