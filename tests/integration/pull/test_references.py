"""Referenced resources over real HTTP: every reference to the five shared types is read under
the connection's base and stored exactly once per connection; outside references are recorded and
never followed with the token; stale ones are read again, fresh ones not; erase removes them."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from sqlalchemy import select, update

from syncsvc.db import reference_repo, repo
from syncsvc.db.models.records import ResourceReference
from syncsvc.fhir.references import REFERENCED_TYPES
from syncsvc.lifecycle.disconnect import disconnect_connection
from syncsvc.sandbox.referenced import MISSING_PRACTITIONER
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.smart.scopes import plan_scopes
from syncsvc.sync.context import SyncContext
from syncsvc.sync.pull import pull_connection
from syncsvc.sync.tenant_config import smart_configuration
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT
from tests.integration.connected import connect_patient, register_sandbox_tenant

from . import NANCY, SandboxAdmin, StoredTokens, stored

SHARED = set(REFERENCED_TYPES)


async def _connected(
    ctx: SyncContext,
    sandbox: RunningSandbox,
    sandbox_tenant: str,
    *,
    user_id: str = "user-1",
    with_references: bool = True,
) -> StoredTokens:
    """A connection whose grant was asked for the way a launch asks (shared types included)."""
    async with ctx.sessionmaker() as session:
        tenant = await repo.get_tenant_by_name(session, f"refs-{sandbox_tenant}")
    if tenant is None:
        tenant = await register_sandbox_tenant(
            ctx.sessionmaker,
            ctx.vault,
            ctx.http,
            sandbox,
            sandbox_tenant,
            name=f"refs-{sandbox_tenant}",
        )
    config = smart_configuration(tenant)
    assert config is not None
    scopes = plan_scopes(
        tenant.configured_scopes,
        config,
        referenced=REFERENCED_TYPES if with_references else (),
    )
    connection = await connect_patient(
        ctx.sessionmaker,
        ctx.vault,
        ctx.http,
        sandbox,
        tenant,
        sandbox_tenant=sandbox_tenant,
        user_id=user_id,
        scopes=scopes,
    )
    return StoredTokens(ctx, connection, tenant)


def _references(value: Any) -> set[str]:
    """Every relative reference in a resource, found by walking it (not the code under test)."""
    if isinstance(value, dict):
        found = {value["reference"]} if isinstance(value.get("reference"), str) else set()
        return found.union(*(_references(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(_references(item) for item in value))
    return set()


def _names_shared(url: str) -> bool:
    """Whether a request URL is a read or search of a shared type."""
    return any(f"/{t}/" in url or f"/{t}?" in url for t in SHARED)


def _shared_references(rows: dict[tuple[str, str], Any]) -> set[tuple[str, str]]:
    named: set[tuple[str, str]] = set()
    for row in rows.values():
        if row.deleted_at is not None:
            continue
        for reference in _references(orjson.loads(row.body)):
            parts = reference.split("/")
            if len(parts) == 2 and parts[0] in SHARED:
                named.add((parts[0], parts[1]))
    return named


async def _reference_rows(ctx: SyncContext, connection_id: str) -> list[ResourceReference]:
    async with ctx.sessionmaker() as session:
        return list(
            await session.scalars(
                select(ResourceReference).where(ResourceReference.connection_id == connection_id)
            )
        )


@pytest.mark.parametrize("sandbox_tenant", [GENERIC_TENANT, CERNER_TENANT, EPIC_TENANT])
async def test_every_reference_is_read_under_the_base_and_stored_exactly_once(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin, sandbox_tenant: str
) -> None:
    tokens = await _connected(ctx, sandbox, sandbox_tenant)
    connection_id = tokens.connection.id
    since = len(await admin.requests())

    summary = await pull_connection(ctx, connection_id, tokens)

    assert summary.outcome == "ok", summary
    rows = await stored(ctx, connection_id)
    named = _shared_references(rows)
    held = {key for key in rows if key[0] in SHARED}
    missing = {("Practitioner", MISSING_PRACTITIONER)}
    # Every shared resource the record names (and those the shared ones name) is stored, but
    # the one the EHR does not have; nothing else of those types is stored.
    assert named - missing == held
    assert {key[0] for key in held} == SHARED
    assert missing <= named
    # Stored once however many resources name it: the record names them many times over.
    assert summary.references is not None
    assert summary.references.stored == len(held)
    assert summary.references.missing == 1
    assert summary.counts.new == len(rows)
    references = await _reference_rows(ctx, connection_id)
    by_state: dict[str, int] = {}
    for row in references:
        by_state[row.state] = by_state.get(row.state, 0) + 1
    assert by_state == {"stored": len(held), "missing": 1, "outside_base": 1}
    [outside] = [row for row in references if row.state == "outside_base"]
    assert (outside.kind, outside.resource_type) == ("other_server", "Organization")

    log = [e for e in await admin.requests(since) if e["tenant_id"] == sandbox_tenant]
    shared_requests = [e["url"] for e in log if _names_shared(e["url"])]
    searched = {url.split("/")[-1].split("?")[0] for url in shared_requests if "_id=" in url}
    # Batched by ``_id`` where the CapabilityStatement lists it, read one by one elsewhere.
    expected_search = {
        GENERIC_TENANT: SHARED,
        CERNER_TENANT: {"Practitioner", "Organization", "Location"},
        EPIC_TENANT: set(),
    }[sandbox_tenant]
    assert searched == expected_search
    reads = [url for url in shared_requests if "_id=" not in url]
    assert len(reads) == len({k for k in held | missing if k[0] not in expected_search}), reads
    assert all("registry.example.org" not in url for url in shared_requests)

    # A second run reads nothing again (none is stale) and stores nothing twice.
    again = await pull_connection(ctx, connection_id, tokens, full=True)
    assert again.outcome == "ok"
    assert again.references is not None
    assert again.references.asked == 0
    after = await stored(ctx, connection_id)
    assert {k: (r.seq, r.content_hash) for k, r in after.items()} == {
        k: (r.seq, r.content_hash) for k, r in rows.items()
    }
    assert len(await _reference_rows(ctx, connection_id)) == len(references)


async def test_stale_references_are_read_again_and_changes_stored_once(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin
) -> None:
    tokens = await _connected(ctx, sandbox, GENERIC_TENANT)
    connection_id = tokens.connection.id
    await pull_connection(ctx, connection_id, tokens)
    before = await stored(ctx, connection_id)
    max_age = dt.timedelta(seconds=ctx.settings.reference_max_age_seconds)
    async with ctx.sessionmaker.begin() as session:
        # Read more than the configured age ago, except the Organizations.
        await session.execute(
            update(ResourceReference)
            .where(
                ResourceReference.connection_id == connection_id,
                ResourceReference.resource_type != "Organization",
                ResourceReference.state != "outside_base",
            )
            .values(checked_at=ctx.now() - max_age - dt.timedelta(minutes=1))
        )

    summary = await pull_connection(ctx, connection_id, tokens)

    assert summary.references is not None
    stale = {k for k in before if k[0] in SHARED - {"Organization"}}
    assert summary.references.asked == len(stale) + 1  # and the missing one, asked again
    assert summary.references.counts.unchanged == len(stale)
    assert summary.references.counts.new == 0
    after = await stored(ctx, connection_id)
    assert {k: r.seq for k, r in after.items()} == {k: r.seq for k, r in before.items()}


async def test_each_connection_has_its_own_copy_and_erase_removes_it(
    ctx: SyncContext, sandbox: RunningSandbox
) -> None:
    first = await _connected(ctx, sandbox, CERNER_TENANT, user_id="user-1")
    second = await _connected(ctx, sandbox, CERNER_TENANT, user_id="user-2")
    await pull_connection(ctx, first.connection.id, first)
    await pull_connection(ctx, second.connection.id, second)
    ours = {k for k in await stored(ctx, first.connection.id) if k[0] in SHARED}
    theirs = {k for k in await stored(ctx, second.connection.id) if k[0] in SHARED}
    assert ours == theirs
    assert ours

    await disconnect_connection(ctx, first.connection.id, by="patient", erase=True)

    assert await stored(ctx, first.connection.id) == {}
    assert await _reference_rows(ctx, first.connection.id) == []
    async with ctx.sessionmaker() as session:
        counts = await reference_repo.reference_counts(session, first.connection.id)
    assert counts.states == {}
    assert counts.resolved_at is None
    assert {k for k in await stored(ctx, second.connection.id) if k[0] in SHARED} == theirs


async def test_a_grant_without_the_shared_types_reads_and_scans_nothing(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin
) -> None:
    tokens = await _connected(ctx, sandbox, GENERIC_TENANT, with_references=False)
    since = len(await admin.requests())

    summary = await pull_connection(ctx, tokens.connection.id, tokens)

    assert summary.outcome == "ok"
    assert not {k for k in await stored(ctx, tokens.connection.id) if k[0] in SHARED}
    assert await _reference_rows(ctx, tokens.connection.id) == []
    urls = [e["url"] for e in await admin.requests(since)]
    assert not [u for u in urls if _names_shared(u)]


@pytest.fixture
async def hostile_server() -> AsyncIterator[tuple[str, list[str]]]:
    """A loopback server that records every request and whether a bearer token came with it."""
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", "(none)"))
        return web.json_response({"resourceType": "Practitioner", "id": "evil"})

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await asyncio.wait_for(runner.cleanup(), timeout=10)


@pytest.mark.parametrize("sandbox_tenant", [GENERIC_TENANT, CERNER_TENANT])
async def test_a_hostile_reference_never_gets_the_token(
    ctx: SyncContext,
    sandbox: RunningSandbox,
    admin: SandboxAdmin,
    hostile_server: tuple[str, list[str]],
    sandbox_tenant: str,
) -> None:
    origin, seen = hostile_server
    base = sandbox.urls(sandbox_tenant).fhir_base
    other_tenant = sandbox.urls(EPIC_TENANT if sandbox_tenant != EPIC_TENANT else CERNER_TENANT)
    hostile = [
        f"{origin}/fhir/Practitioner/evil",  # another server on loopback
        f"{origin}{base[len(sandbox.origin) :]}/Practitioner/pr-4821",  # the base's path elsewhere
        f"{other_tenant.fhir_base}/Practitioner/pr-4821",  # another tenant of the same host
        f"{base}/../other/Practitioner/pr-1177",  # a dot segment out of the base
        f"{base}/Practitioner/../../other/Practitioner/pr-3090",
        # Not counted (they name no shared type), and not followed either:
        f"{base}/Practitioner/pr-4821/../../../x",
        f"{base}%2F..%2FPractitioner/pr-3090",
        "#contained-practitioner",
        "urn:uuid:4f6a3c2e-8d7b-4a1f-9c3e-2b5d6e7f8a90",
    ]
    await admin.call(
        "POST",
        f"tenants/{sandbox_tenant}/patients/{NANCY}/Observation",
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "hostile"},
            "performer": [{"reference": url} for url in hostile]
            + [{"identifier": {"system": "urn:oid:2.16.840.1.113883.4.6", "value": "1234"}}],
        },
    )
    tokens = await _connected(ctx, sandbox, sandbox_tenant)
    since = len(await admin.requests())

    summary = await pull_connection(ctx, tokens.connection.id, tokens)

    assert summary.outcome == "ok", summary
    assert seen == []  # not one request, let alone a token
    log = await admin.requests(since)
    assert all(e["tenant_id"] == sandbox_tenant for e in log if e["token_tenant"]), log
    assert not [e for e in log if "/other/" in e["url"] or "%2F" in e["url"]]
    async with ctx.sessionmaker() as session:
        counts = await reference_repo.reference_counts(session, tokens.connection.id)
    # The generated record's own outside reference, and each hostile shape, counted by kind.
    assert counts.outside_kinds == {
        "other_server": 1 + 5,
        "contained": 1,
        "urn": 1,
        "identifier": 1,
    }
