"""Limits of retrying in place, over HTTP: a type already failing, the run's time budget."""

from __future__ import annotations

import dataclasses

import pytest

from syncsvc.db import run_repo
from syncsvc.fhir.client import FhirRequestError
from syncsvc.http import create_http_client
from syncsvc.sandbox.config import SandboxConfig
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.sync.context import SyncContext
from syncsvc.sync.grant_client import GrantClient
from syncsvc.sync.pull import pull_connection
from syncsvc.sync.retry import RetryPolicy
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.connected import connect_patient, register_sandbox_tenant

from . import NANCY, SandboxAdmin, StoredTokens, stored

TYPES = ("Patient", "Condition", "Observation", "Goal")


@pytest.fixture
def sandbox_config(sandbox_config: SandboxConfig) -> SandboxConfig:
    """Nancy with one page of each type."""
    for tenant in sandbox_config.tenants:
        tenant.patients[0].sizes = {"Condition": 5, "Observation": 5, "Goal": 2}
    return sandbox_config


async def _connected(ctx: SyncContext, sandbox: RunningSandbox) -> StoredTokens:
    tenant = await register_sandbox_tenant(
        ctx.sessionmaker, ctx.vault, ctx.http, sandbox, GENERIC_TENANT, resource_types=TYPES
    )
    connection = await connect_patient(
        ctx.sessionmaker, ctx.vault, ctx.http, sandbox, tenant, sandbox_tenant=GENERIC_TENANT
    )
    return StoredTokens(ctx, connection, tenant)


def _observation_requests(log: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in log if "/Observation" in str(e["url"]) and e["token_id"]]


async def test_a_type_already_failing_gets_one_try_and_no_wait_in_place(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin
) -> None:
    tokens = await _connected(ctx, sandbox)
    # Broken for the whole tenant: the first run retries in place, then the type fails.
    await admin.faults(GENERIC_TENANT, [{"kind": "status_503", "target": "Observation"}])
    first = await pull_connection(ctx, tokens.connection.id, tokens)
    assert first.types["Observation"].status == "transient_error"
    assert first.retries == {"http_503": RetryPolicy().attempts - 1}
    seen = len(await admin.requests())

    # Still broken, now asking for half a minute: the failing type is asked once, not waited
    # out three times (the run would hold the tenant's slot for a minute and a half).
    await admin.faults(
        GENERIC_TENANT,
        [
            {
                "kind": "status_503",
                "target": "Observation",
                "with_retry_after": True,
                "retry_after": 30,
            }
        ],
    )
    second = await pull_connection(ctx, tokens.connection.id, tokens, types=["Observation"])

    assert second.types["Observation"].status == "transient_error"
    assert second.retries == {}
    assert len(_observation_requests(await admin.requests(since=seen))) == 1
    async with ctx.sessionmaker() as session:
        states = await run_repo.sync_states(session, tokens.connection.id)
        assert second.run_id is not None
        run = await run_repo.get_run(session, second.run_id)
    assert states["Observation"].failure_count == 2
    assert run is not None
    assert run.retries == 0
    # (The next attempt follows the type's own schedule, with the server's wait honoured.)
    assert second.types["Observation"].next_attempt_at is not None
    assert second.types["Observation"].next_attempt_at > second.finished_at

    # Once the EHR answers again, the type recovers and retries in place as usual.
    await admin.faults(
        GENERIC_TENANT, [{"kind": "status_503", "target": "Observation", "count": 1}]
    )
    third = await pull_connection(ctx, tokens.connection.id, tokens, types=["Observation"])
    # Still failing when the run began: the one 503 ends this run's try of the type.
    assert third.types["Observation"].status == "transient_error"
    fourth = await pull_connection(ctx, tokens.connection.id, tokens, types=["Observation"])
    assert fourth.types["Observation"].status == "ok"


@pytest.mark.parametrize(
    ("budget", "retries"),
    [
        # Three waits of at most 0.5, 1 and 2 s, each followed by a try of up to 20 s: all fit.
        (25.0, 3),
        # Every wait fits, but no wait and a 20 s try does: no retry at all.
        (10.0, 0),
    ],
)
async def test_a_retry_starts_only_if_its_wait_and_its_try_fit_in_the_budget(
    ctx: SyncContext,
    sandbox: RunningSandbox,
    admin: SandboxAdmin,
    budget: float,
    retries: int,
) -> None:
    tokens = await _connected(ctx, sandbox)
    await admin.faults(GENERIC_TENANT, [{"kind": "status_503", "target": "Observation"}])
    seen = len(await admin.requests())
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)  # time stands still: only the budget arithmetic decides

    client = GrantClient(
        ctx.http,
        tokens.connection.fhir_base,
        tokens,
        retry=RetryPolicy(budget_seconds=budget),
        clock=lambda: 1000.0,
        sleep=sleep,
    )
    # The test's HTTP client allows 20 s for a request in all (no separate read timeout).
    assert ctx.http.timeout.sock_read is None
    assert ctx.http.timeout.total == 20

    with pytest.raises(FhirRequestError) as raised:
        await client.get_bytes(
            f"{tokens.connection.fhir_base}/Observation",
            {"patient": NANCY},
            resource_type="Observation",
        )

    assert raised.value.failure.status == 503
    assert sum(client.retries.values()) == len(waits) == retries
    assert len(_observation_requests(await admin.requests(since=seen))) == 1 + retries


async def test_a_request_that_times_out_is_retried_in_place(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin
) -> None:
    tokens = await _connected(ctx, sandbox)
    # One of Nancy's Observation searches hangs well past the client's read timeout.
    await admin.faults(
        GENERIC_TENANT,
        [
            {
                "kind": "latency",
                "target": "Observation",
                "patient": NANCY,
                "latency_ms": 4000,
                "count": 1,
            }
        ],
    )
    seen = len(await admin.requests())
    async with create_http_client(total_seconds=20, read_seconds=1.0) as short:
        impatient = dataclasses.replace(ctx, http=short)
        summary = await pull_connection(impatient, tokens.connection.id, tokens)

    assert summary.outcome == "ok", summary
    assert {r.status for r in summary.types.values()} == {"ok"}
    # Retried in place under "timeout" (another request could time out on a loaded machine too,
    # but nothing else went wrong).
    assert summary.retries.get("timeout", 0) >= 1
    assert set(summary.retries) == {"timeout"}
    async with ctx.sessionmaker() as session:
        assert summary.run_id is not None
        run = await run_repo.get_run(session, summary.run_id)
    assert run is not None
    assert run.retries == sum(summary.retries.values())
    # Each retry was a request of its own: one per type, plus the tries that timed out.
    assert summary.requests == len(TYPES) + sum(summary.retries.values())
    # The EHR answered the (one-page) Observation search once: the try that hung was given up
    # by the client before the answer.
    observations = _observation_requests(await admin.requests(since=seen))
    assert [e["status"] for e in observations].count(200) == 1
    assert len(await stored(ctx, tokens.connection.id)) == 1 + 5 + 5 + 2
