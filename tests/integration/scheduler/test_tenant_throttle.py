"""A tenant's 429 pauses every connection of that tenant for its ``Retry-After``, and no longer.

Three connections of one tenant are pulled side by side, every answer taking a little while so
that they overlap; one Condition search is answered 429 with ``Retry-After: 4``. The sandbox's
request log then shows the tenant's requests stopping for four seconds (only those already in
flight land in between) and resuming right after, for every connection that still had work.
"""

from __future__ import annotations

import aiohttp
import pytest
from sqlalchemy import select

from syncsvc.db.models import SyncRun
from syncsvc.sandbox.config import FaultSpec, SandboxConfig
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.settings import Settings
from syncsvc.sync.limits import TenantLimiter
from syncsvc.sync.runner import run_due
from syncsvc.vault import Vault
from tests.fixtures.sandbox import GENERIC_TENANT

from . import NANCY, Sessionmaker, connect_many, contexts

RETRY_AFTER = 4.0
#: An answer's own latency: requests sent just before the 429 arrived land this much later.
LATENCY_MS = 150
#: Slack for a loaded machine: the requests in flight when the 429 came may be logged this long
#: after it, and the first request after the pause this long after the pause ended.
SLACK = 1.5


@pytest.fixture
def sandbox_config(sandbox_config: SandboxConfig) -> SandboxConfig:
    """Nancy with several pages of Observations, so each pull outlasts the 429."""
    for tenant in sandbox_config.tenants:
        tenant.policy.auto_approve_patient = NANCY
        tenant.patients[0].sizes = {"Condition": 3, "Observation": 600}
    return sandbox_config


async def test_a_tenants_429_pauses_all_its_connections_for_retry_after_and_no_longer(
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
) -> None:
    tenant, ids = await connect_many(sessionmaker, vault, http, sandbox, GENERIC_TENANT, 3)
    sandbox.tenant(GENERIC_TENANT).faults[:] = [
        FaultSpec(kind="latency", latency_ms=LATENCY_MS),
        FaultSpec(kind="throttle", target="Condition", count=1, retry_after=int(RETRY_AFTER)),
    ]
    mark = len(sandbox.state.request_log)
    limiter = TenantLimiter()
    async with contexts(settings, sessionmaker, vault, 1) as (ctx,):
        report = await run_due(ctx, limiter=limiter)

    assert report.sync == {"ok": 3}, report.to_json()
    assert limiter.gate(tenant.id, tenant.vendor).throttles == 1
    log = [
        entry
        for entry in list(sandbox.state.request_log)[mark:]
        if entry.tenant_id == GENERIC_TENANT and entry.token_id and "/admin/" not in entry.url
    ]
    [throttled] = [entry for entry in log if entry.status == 429]
    after = [entry for entry in log if entry.at > throttled.at]
    paused_until = throttled.at + RETRY_AFTER
    # Nothing was sent during the pause: what landed in it was already in flight.
    in_flight = [e for e in after if e.at < paused_until]
    assert all(e.at <= throttled.at + LATENCY_MS / 1000 + SLACK for e in in_flight), [
        round(e.at - throttled.at, 3) for e in in_flight
    ]
    resumed = [e for e in after if e.at >= paused_until]
    assert resumed
    # ... and no longer: the tenant's requests went on as soon as the pause ended.
    assert min(e.at for e in resumed) <= paused_until + LATENCY_MS / 1000 + SLACK
    # Every connection waited, not only the one that was answered 429 (each has its own token).
    assert len({e.token_id for e in resumed}) >= 2
    # The throttled search itself was retried in place after the pause, and counted.
    assert any("/Condition?" in e.url and e.status == 200 for e in resumed)
    async with sessionmaker() as session:
        runs = list(await session.scalars(select(SyncRun)))
    assert sorted(run.retries for run in runs) == [0, 0, 1]
    assert {run.connection_id for run in runs} == set(ids)
