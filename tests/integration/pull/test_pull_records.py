"""Full and incremental pulls of every granted type on Cerner-, Epic- and generic-shaped tenants."""

from __future__ import annotations

import datetime as dt
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from syncsvc.db import repo, resource_repo, run_repo
from syncsvc.sandbox.config import SandboxConfig
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.sync.context import SyncContext
from syncsvc.sync.pull import pull_connection
from syncsvc.sync.tenant_config import DEFAULT_RESOURCE_TYPES
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT
from tests.integration.connected import connect_patient, register_sandbox_tenant

from . import NANCY, SandboxAdmin, StoredTokens, ids_of, stored


@pytest.fixture
def sandbox_config(sandbox_config: SandboxConfig) -> SandboxConfig:
    """Nancy with enough Observations to page on every tenant (Cerner pages at 200)."""
    for tenant in sandbox_config.tenants:
        tenant.patients[0].sizes = {"Observation": 450, "Condition": 30}
    return sandbox_config


def _category(url: str) -> str:
    return parse_qs(urlsplit(url).query)["category"][0]


async def _connected(
    ctx: SyncContext, sandbox: RunningSandbox, sandbox_tenant: str
) -> StoredTokens:
    tenant = await register_sandbox_tenant(
        ctx.sessionmaker, ctx.vault, ctx.http, sandbox, sandbox_tenant
    )
    connection = await connect_patient(
        ctx.sessionmaker, ctx.vault, ctx.http, sandbox, tenant, sandbox_tenant=sandbox_tenant
    )
    return StoredTokens(ctx, connection, tenant)


@pytest.mark.parametrize("ctx", ["in-place", "worker"], indirect=True)
@pytest.mark.parametrize("sandbox_tenant", [CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT])
async def test_a_first_pull_stores_every_granted_type_in_full(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin, sandbox_tenant: str
) -> None:
    tokens = await _connected(ctx, sandbox, sandbox_tenant)
    connection_id = tokens.connection.id

    summary = await pull_connection(ctx, connection_id, tokens)

    assert summary.outcome == "ok", summary
    rows = await stored(ctx, connection_id)
    # Every US Core type the tenant offers, and nothing it does not (Cerner-shaped: no
    # ImagingStudy; Cerner- and Epic-shaped: no Provenance search per patient).
    policy = sandbox.tenant(sandbox_tenant).policy
    unsupported = {*policy.unserved_types, *policy.unsearchable_types}
    assert set(summary.types) == set(DEFAULT_RESOURCE_TYPES) - unsupported
    for resource_type, result in summary.types.items():
        assert result.status == "ok"
        assert result.mode == "full"
        if resource_type == "Patient":
            assert ids_of(rows, "Patient") == {NANCY}
            continue
        # Epic's category rule: Observation and CarePlan are searched per category, and the
        # union of those searches is the whole record.
        upstream = await admin.ids(sandbox_tenant, NANCY, resource_type)
        assert ids_of(rows, resource_type) == upstream, resource_type
        assert result.counts.new == len(upstream)
    assert summary.counts.new == len(rows)
    # Seqs are a gapless 1..n on a first pull: each write got exactly one.
    assert sorted(row.seq for row in rows.values()) == list(range(1, len(rows) + 1))
    log = await admin.requests()
    searches = [e["url"] for e in log if "/Observation?" in e["url"]]
    assert any("pageContext=" in url for url in searches)  # paged
    if sandbox_tenant == EPIC_TENANT:
        assert all("category=" in url or "pageContext=" in url for url in searches)
        # Epic's care plans are searched by SNOMED CT category, longitudinal and
        # encounter-level, and the plans of both are stored.
        plans = [
            e["url"] for e in log if "/CarePlan?" in e["url"] and "pageContext=" not in e["url"]
        ]
        assert {_category(url) for url in plans} == {"38717003", "734163000"}
        kinds = {
            coding["code"]
            for (rtype, _), row in rows.items()
            if rtype == "CarePlan"
            for concept in orjson.loads(row.body)["category"]
            for coding in concept["coding"]
        }
        assert kinds == {"38717003", "734163000"}

    async with ctx.sessionmaker() as session:
        run = await run_repo.get_run(session, summary.run_id or "")
        connection = await repo.get_connection(session, connection_id)
        states = await run_repo.sync_states(session, connection_id)
    assert run is not None
    assert run.outcome == "ok"
    assert run.finished_at is not None
    assert run.new_count == len(rows)
    assert run.requests == summary.requests > len(summary.types)
    assert run.bytes_received > 0
    assert run.type_results["Observation"]["new"] == summary.types["Observation"].counts.new
    assert connection is not None
    assert connection.last_sync_at == connection.last_success_at == summary.finished_at
    assert connection.next_sync_at is not None  # left for the scheduler
    assert {t for t, state in states.items() if state.status == "unsupported"} == unsupported
    assert all(
        state.status == "ok" and state.last_full_at
        for name, state in states.items()
        if name not in unsupported
    )
    # A type the tenant does not offer is never asked for.
    assert not [e for e in log for t in unsupported if f"/{t}?" in e["url"]]


async def test_incremental_pull_stores_only_changes_and_reconciliation_flags_deletions(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin
) -> None:
    tokens = await _connected(ctx, sandbox, GENERIC_TENANT)
    connection_id = tokens.connection.id
    first = await pull_connection(ctx, connection_id, tokens)
    assert first.outcome == "ok"
    before = await stored(ctx, connection_id)
    patient = f"tenants/{GENERIC_TENANT}/patients/{NANCY}"
    conditions = sorted(ids_of(before, "Condition"))
    goals = sorted(ids_of(before, "Goal"))
    # The EHR adds, changes, deletes and enters in error.
    added = await admin.call(
        "POST",
        f"{patient}/Observation",
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "valueQuantity": {"value": 71, "unit": "/min"},
        },
    )
    await admin.call("PATCH", f"{patient}/Condition/{conditions[0]}", {"note": [{"text": "x"}]})
    await admin.call("POST", f"{patient}/Condition/{conditions[1]}/entered-in-error")
    await admin.call("DELETE", f"{patient}/Goal/{goals[0]}")
    mark = len(await admin.requests())

    second = await pull_connection(ctx, connection_id, tokens)

    assert second.outcome == "ok"
    assert second.types["Observation"].mode == "incremental"
    assert second.types["Observation"].counts.new == 1
    assert second.types["Condition"].counts.changed == 1
    assert second.types["Condition"].counts.deleted == 1
    # An incremental search cannot see a deletion: the Goal is still there, unflagged.
    assert second.types["Goal"].counts.deleted == 0
    assert second.counts.new + second.counts.changed + second.counts.deleted == 3
    searches = [e["url"] for e in (await admin.requests(mark)) if "/Condition?" in e["url"]]
    assert searches
    assert all("_lastUpdated=gt" in url for url in searches)
    after = await stored(ctx, connection_id)
    assert ("Observation", added["id"]) in after
    changed = {("Condition", conditions[0]), ("Condition", conditions[1])}
    for key, row in before.items():
        if key in changed:
            continue
        # Not rewritten: same seq and same write time.
        assert (after[key].seq, after[key].stored_at) == (row.seq, row.stored_at), key
    top = max(row.seq for row in before.values())
    assert after[("Condition", conditions[0])].seq > top
    eie = after[("Condition", conditions[1])]
    assert eie.deleted_reason == "entered-in-error"
    assert eie.deleted_at is not None
    async with ctx.sessionmaker() as session:
        history = await resource_repo.resource_history(
            session, connection_id, "Condition", conditions[0]
        )
        since = await resource_repo.changes_since(session, connection_id, top)
    assert [h.content_hash for h in history] == [before[("Condition", conditions[0])].content_hash]
    assert {(r.resource_type, r.resource_id) for r in since} == changed | {
        ("Observation", added["id"])
    }

    reconciled = await pull_connection(ctx, connection_id, tokens, full=True)

    assert reconciled.outcome == "ok"
    assert reconciled.types["Goal"].counts.deleted == 1
    assert reconciled.counts.new == reconciled.counts.changed == 0
    # The run's own counts take the vanished Goal in too (types are recorded once all ended).
    assert reconciled.counts.deleted == 1
    final = await stored(ctx, connection_id)
    vanished = final[("Goal", goals[0])]
    assert vanished.deleted_reason == "vanished"
    assert vanished.deleted_at is not None
    assert vanished.body == before[("Goal", goals[0])].body  # kept, not erased
    assert vanished.seq > max(row.seq for row in after.values())
    untouched = set(final) - {("Goal", goals[0])}
    assert all(final[key].seq == after[key].seq for key in untouched)


async def test_a_stale_reconciliation_makes_an_incremental_type_full_again(
    ctx: SyncContext, sandbox: RunningSandbox
) -> None:
    tokens = await _connected(ctx, sandbox, GENERIC_TENANT)
    connection_id = tokens.connection.id
    await pull_connection(ctx, connection_id, tokens)
    # Eight days later, by the service's clock.
    later = SyncContext(
        ctx.settings,
        ctx.sessionmaker,
        ctx.vault,
        ctx.http,
        clock=lambda: dt.datetime.now(dt.UTC) + dt.timedelta(days=8),
    )

    summary = await pull_connection(later, connection_id, tokens, types=["Condition", "Goal"])

    assert set(summary.types) == {"Condition", "Goal"}
    assert {r.mode for r in summary.types.values()} == {"full"}
    assert summary.counts.unchanged > 0
    assert summary.counts.new == summary.counts.changed == 0


async def test_a_tenants_plan_overrides_change_its_searches(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin
) -> None:
    tokens = await _connected(ctx, sandbox, GENERIC_TENANT)
    async with ctx.sessionmaker.begin() as session:
        tenant = await repo.get_tenant(session, tokens.tenant.id)
        assert tenant is not None
        tenant.plan_overrides = {"Observation": {"count": 37}}
    progress: list[str] = []

    summary = await pull_connection(
        ctx, tokens.connection.id, tokens, on_type=lambda r: progress.append(r.resource_type)
    )

    assert summary.outcome == "ok", summary
    # Each type once, as it finishes (types are pulled side by side, so not in plan order).
    assert sorted(progress) == sorted(summary.types)
    assert len(progress) == len(set(progress))
    log = await admin.requests()
    observation = [e["url"] for e in log if "/Observation?" in e["url"] and "patient=" in e["url"]]
    condition = [e["url"] for e in log if "/Condition?" in e["url"] and "patient=" in e["url"]]
    assert observation
    assert all("_count=37" in url for url in observation)
    assert all("_count=100" in url for url in condition)  # the vendor plan, untouched
    assert summary.types["Observation"].counts.new == 450
