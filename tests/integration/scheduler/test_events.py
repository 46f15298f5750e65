"""Events the runner records per connection run, one per failing type or class, in the health
vocabulary: driven by real sandbox faults and policies through ``run_due``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from sqlalchemy import update

from syncsvc.db.models.connections import Credential
from syncsvc.sandbox.config import FaultSpec
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.sandbox.token_endpoint import revoke_grant
from syncsvc.settings import Settings
from syncsvc.sync.credentials import load_tokens
from syncsvc.sync.outcomes import HEALTH_CLASSES, health_class
from syncsvc.sync.runner import run_due
from syncsvc.vault import Vault
from tests.fixtures.sandbox import GENERIC_TENANT

from . import Sessionmaker, connect_many, contexts, events

Expected = set[tuple[str, str, str | None, str | None]]
Setup = Callable[[RunningSandbox, Sessionmaker, Vault, str], Awaitable[None]]


def fault(kind: str, target: str, count: int | None = None) -> Setup:
    async def setup(sandbox: RunningSandbox, *_: object) -> None:
        sandbox.tenant(GENERIC_TENANT).faults = [FaultSpec(kind=kind, target=target, count=count)]  # type: ignore[arg-type]

    return setup


async def _expire_access_token(sessionmaker: Sessionmaker, connection_id: str) -> None:
    # The stored access token looks spent, so a refresh is due now.
    async with sessionmaker.begin() as session:
        await session.execute(
            update(Credential)
            .where(Credential.connection_id == connection_id)
            .values(access_expires_at=dt.datetime.now(dt.UTC))
        )


async def token_throttled(
    sandbox: RunningSandbox, sessionmaker: Sessionmaker, vault: Vault, connection_id: str
) -> None:
    await _expire_access_token(sessionmaker, connection_id)
    sandbox.tenant(GENERIC_TENANT).faults = [FaultSpec(kind="throttle", target="token")]


async def grant_revoked(
    sandbox: RunningSandbox, sessionmaker: Sessionmaker, vault: Vault, connection_id: str
) -> None:
    async with sessionmaker() as session:
        tokens = await load_tokens(session, vault, connection_id)
    assert tokens is not None
    assert tokens.refresh_token is not None
    revoke_grant(sandbox.state.grants[sandbox.state.refresh_index[tokens.refresh_token]], "test")
    await _expire_access_token(sessionmaker, connection_id)


CASES: dict[str, tuple[Setup, Expected]] = {
    "throttled": (
        fault("throttle", "Observation"),
        {("sync", "transient", "throttled", "Observation")},
    ),
    "upstream_5xx": (
        fault("status_500", "fhir", count=1),
        {("sync", "transient_error", "upstream_5xx", "Patient")},
    ),
    "malformed": (
        fault("malformed_json", "Condition"),
        {("sync", "transient_error", "malformed", "Condition")},
    ),
    "network": (
        fault("reset", "Condition"),
        {("sync", "transient_error", "network", "Condition")},
    ),
    "foreign_next_link": (
        fault("next_foreign", "Observation"),
        {("sync", "error", "foreign_next_link", "Observation")},
    ),
    "paging_loop": (
        fault("next_self", "Observation"),
        {("sync", "error", "paging_loop", "Observation")},
    ),
    "compartment_violation": (
        fault("foreign_patient_entry", "Condition"),
        {("sync", "rejected", "compartment_violation", "Condition")},
    ),
    "refresh_throttled": (token_throttled, {("refresh", "transient", "throttled", None)}),
    "invalid_grant": (grant_revoked, {("refresh", "needs_reauth", "invalid_grant", None)}),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_a_failing_run_records_one_event_per_failing_type_or_class(
    case: str,
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
) -> None:
    setup, expected = CASES[case]
    _, (connection_id,) = await connect_many(sessionmaker, vault, http, sandbox, GENERIC_TENANT, 1)
    await setup(sandbox, sessionmaker, vault, connection_id)
    async with contexts(settings, sessionmaker, vault, 1) as (ctx,):
        report = await run_due(ctx)

    assert report.failures == 0
    recorded = await events(sessionmaker)
    assert {(e.kind, e.outcome, e.error_class, e.resource_type) for e in recorded} == expected
    assert len(recorded) == len(expected)
    assert all(e.connection_id == connection_id for e in recorded)
    assert all(e.error_class in HEALTH_CLASSES for e in recorded)
    if case == "compartment_violation":
        assert recorded[0].count >= 1


async def test_a_token_for_another_tenant_is_recorded_as_tenant_mismatch(
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
) -> None:
    sandbox.tenant(GENERIC_TENANT).policy.issue_tokens_for_tenant = "some-other-tenant"
    await connect_many(sessionmaker, vault, http, sandbox, GENERIC_TENANT, 1)
    async with contexts(settings, sessionmaker, vault, 1) as (ctx,):
        report = await run_due(ctx)

    assert report.sync == {"misbound": 1}
    recorded = await events(sessionmaker)
    # The run carries the health class; the grant's end and its revocation are recorded beside
    # it without one, so the mismatch counts once.
    assert sorted((e.kind, e.outcome, e.error_class or "") for e in recorded) == [
        ("misbound", "misbound", ""),
        ("revocation", "ok", ""),
        ("sync", "misbound", "tenant_mismatch"),
    ]
    [grant] = sandbox.state.grants.values()
    assert grant.revoked


@pytest.mark.parametrize(
    ("reason", "message", "expected"),
    [
        ("insufficient_scope", None, "insufficient_scope"),
        ("tenant_mismatch", None, "tenant_mismatch"),
        ("bad_request", "missing category", "refused"),
        ("transient", "The EHR could not be reached (TimeoutError)", "timeout"),
        ("transient", "The token endpoint answered HTTP 503", "upstream_5xx"),
        ("transient", "The token endpoint is throttling refreshes", "throttled"),
        ("transient", "The token response has no access_token", "malformed"),
        ("lost_lease", "The lease on this connection was lost.", None),
        ("backing_off", "Backing off after a failed refresh.", None),
        # A run ended by a disconnect while it wrote: not the EHR's failure.
        ("disconnected", "The connection was disconnected while it synced.", None),
    ],
)
def test_failure_reasons_map_onto_the_health_vocabulary(
    reason: str, message: str | None, expected: str | None
) -> None:
    assert health_class(reason, message) == expected
