"""A hostile EHR's oversized pages: capped while read, one type fails, memory stays bounded."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from syncsvc.db import repo, run_repo
from syncsvc.fhir.page_limits import MIB
from syncsvc.sandbox.config import SandboxConfig
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.sync.context import SyncContext
from syncsvc.sync.pull import pull_connection
from syncsvc.sync.run_records import RunSummary
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.connected import connect_patient, register_sandbox_tenant

from . import NANCY, WILMA, SandboxAdmin, StoredTokens, ids_of, stored

TYPES = ("Patient", "Condition", "Observation", "Goal")


@pytest.fixture
def sandbox_config(sandbox_config: SandboxConfig) -> SandboxConfig:
    """Two patients with a few pages of Observations each."""
    for tenant in sandbox_config.tenants:
        for patient in tenant.patients[:2]:
            patient.sizes = {"Condition": 25, "Observation": 250, "Goal": 4}
    return sandbox_config


async def _connected(
    ctx: SyncContext,
    sandbox: RunningSandbox,
    overrides: dict[str, Any] | None = None,
    patients: tuple[str, ...] = (NANCY,),
) -> list[StoredTokens]:
    tenant = await register_sandbox_tenant(
        ctx.sessionmaker, ctx.vault, ctx.http, sandbox, GENERIC_TENANT, resource_types=TYPES
    )
    if overrides is not None:
        async with ctx.sessionmaker.begin() as session:
            row = await repo.get_tenant(session, tenant.id)
            assert row is not None
            row.plan_overrides = overrides
        tenant.plan_overrides = overrides
    tokens = []
    for index, patient in enumerate(patients):
        connection = await connect_patient(
            ctx.sessionmaker,
            ctx.vault,
            ctx.http,
            sandbox,
            tenant,
            sandbox_tenant=GENERIC_TENANT,
            patient_id=patient,
            user_id=f"user-{index}",
        )
        tokens.append(StoredTokens(ctx, connection, tenant))
    return tokens


async def _assert_type_failed_alone(
    ctx: SyncContext, summary: RunSummary, connection_id: str, what: str
) -> None:
    """Observation failed with ``page_too_large``; the connection and the other types did not."""
    observation = summary.types["Observation"]
    assert summary.outcome == "partial"
    assert (observation.status, observation.error_class) == ("error", "page_too_large")
    assert observation.error_message is not None
    assert what in observation.error_message
    assert {summary.types[t].status for t in ("Patient", "Condition", "Goal")} == {"ok"}
    rows = await stored(ctx, connection_id)
    assert len(ids_of(rows, "Condition")) == 25
    assert len(ids_of(rows, "Goal")) == 4
    async with ctx.sessionmaker() as session:
        states = await run_repo.sync_states(session, connection_id)
        run = await run_repo.get_run(session, summary.run_id or "")
        connection = await repo.get_connection(session, connection_id)
    # The stored type state and the run record (what pages, API and health read) agree.
    assert (states["Observation"].status, states["Observation"].error_class) == (
        "error",
        "page_too_large",
    )
    assert states["Observation"].error_message == observation.error_message
    assert states["Observation"].watermark is None
    assert run is not None
    assert run.type_results["Observation"]["error_class"] == "page_too_large"
    assert connection is not None
    assert connection.status == "active"
    # Nothing of the page is held any more.
    assert ctx.page_budget.in_flight == 0


@pytest.mark.parametrize("ctx", ["in-place", "worker"], indirect=True)
async def test_an_oversized_streamed_page_fails_its_type_without_being_buffered(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin
) -> None:
    capped = SyncContext(
        ctx.settings.replace(max_page_bytes=MIB, page_budget_bytes=2 * MIB),
        ctx.sessionmaker,
        ctx.vault,
        ctx.http,
        decoder=ctx.decoder,
    )
    (tokens,) = await _connected(capped, sandbox)
    # 40 MiB of valid JSON, chunked, with no Content-Length to refuse it by.
    await admin.faults(
        GENERIC_TENANT,
        [{"kind": "oversized_page", "target": "Observation", "size_bytes": 40 * MIB}],
    )

    summary = await pull_connection(capped, tokens.connection.id, tokens)

    await _assert_type_failed_alone(capped, summary, tokens.connection.id, "1,048,576 bytes")
    # Every byte read was reserved first: the page was dropped at the cap, not after 40 MiB.
    assert 0 < capped.page_budget.peak <= 2 * MIB
    assert summary.bytes_received < 2 * MIB
    sent = [e for e in await admin.requests() if "/Observation?" in e["url"]]
    assert len(sent) == 1  # the type stopped at the refused page


@pytest.mark.parametrize("ctx", ["in-place", "worker"], indirect=True)
async def test_a_page_with_too_many_entries_fails_its_type(
    ctx: SyncContext, sandbox: RunningSandbox
) -> None:
    # The tenant's own cap (a plan override for the whole tenant) under the 100 a page.
    (tokens,) = await _connected(ctx, sandbox, {"*": {"max_page_entries": 50}})

    summary = await pull_connection(ctx, tokens.connection.id, tokens)

    await _assert_type_failed_alone(ctx, summary, tokens.connection.id, "50 entries")
    rows = await stored(ctx, tokens.connection.id)
    assert not ids_of(rows, "Observation")


async def test_an_announced_length_over_the_cap_is_refused_before_reading(
    ctx: SyncContext, sandbox: RunningSandbox
) -> None:
    # A page of 25 Conditions fits in 32 KiB; a page of 100 Observations does not.
    (tokens,) = await _connected(ctx, sandbox, {"*": {"max_page_bytes": 32 * 1024}})

    summary = await pull_connection(ctx, tokens.connection.id, tokens)

    await _assert_type_failed_alone(ctx, summary, tokens.connection.id, "32,768 bytes")
    # Refused on its Content-Length: nothing of its body was reserved or read.
    assert ctx.page_budget.peak <= 32 * 1024


async def test_concurrent_pulls_never_hold_more_than_the_page_budget(
    ctx: SyncContext, sandbox: RunningSandbox
) -> None:
    # Room for about two pages of 100 Observations (some 160 KB each) at once.
    budget = 400 * 1024
    small = SyncContext(
        ctx.settings.replace(max_page_bytes=200 * 1024, page_budget_bytes=budget),
        ctx.sessionmaker,
        ctx.vault,
        ctx.http,
    )
    nancy, wilma = await _connected(small, sandbox, patients=(NANCY, WILMA))
    # Another holder has the whole budget: every page must wait for it, holding nothing.
    blocker = await small.page_budget.reserve(budget)

    pulls = asyncio.gather(
        pull_connection(small, nancy.connection.id, nancy),
        pull_connection(small, wilma.connection.id, wilma),
    )
    for _ in range(500):
        if small.page_budget.waits >= 2:
            break
        await asyncio.sleep(0.01)
    assert small.page_budget.waits >= 2  # both connections' first pages are waiting
    assert small.page_budget.in_flight == budget
    blocker.release()
    summaries = await asyncio.wait_for(pulls, 60)

    assert [s.outcome for s in summaries] == ["ok", "ok"]
    for summary in summaries:
        assert summary.types["Observation"].counts.new == 250
    assert 0 < small.page_budget.peak <= budget
    assert small.page_budget.in_flight == 0
