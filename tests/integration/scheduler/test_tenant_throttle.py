"""A tenant's 429 pauses every connection of that tenant for its ``Retry-After``, and no longer.

Three connections of one tenant are pulled side by side, every answer taking a little while so
that they overlap; one Condition search is answered 429 with ``Retry-After: 4``. The client
records when each request passed the tenant's gate and when the 429 was heard (on syncsvc's own
clock, the one the tenant's bucket pauses by). No request may start after the 429 was heard and
before the bucket's ``paused_until``; once the pause is over the waiting connections are served.
Only those bounds are asserted, so a loaded machine can delay requests but never fail the test.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import aiohttp
import pytest
from sqlalchemy import select

from syncsvc.db.models.records import SyncRun
from syncsvc.sandbox.config import FaultSpec, SandboxConfig
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.settings import Settings
from syncsvc.sync.limits import TenantLimiter
from syncsvc.sync.runner import run_due
from syncsvc.vault import Vault
from tests.fixtures.sandbox import GENERIC_TENANT

from . import NANCY, Sessionmaker, connect_many, contexts

RETRY_AFTER = 4.0
#: An answer's own latency, so that the connections' requests overlap.
LATENCY_MS = 150
#: How soon after the pause the waiting connections must have been served: generous, since
#: only a request that never came back would exceed it.
SERVED_WITHIN = 15.0


@dataclass
class Started:
    """One FHIR request as the client saw it pass the gate."""

    at: float
    url: str
    #: A digest of its bearer token: which connection sent it.
    grant: str


@dataclass
class RequestWatch:
    """Request starts (after the gate) and 429s heard, on the monotonic clock."""

    fhir_base: str
    started: list[Started] = field(default_factory=list)
    #: Of each request answered 429: when it started and when its answer was heard.
    throttled: list[tuple[float, float]] = field(default_factory=list)

    def trace(self) -> aiohttp.TraceConfig:
        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(self._start)
        trace.on_request_end.append(self._end)
        return trace

    async def _start(
        self,
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        # Runs after the gate's own hook returned, with no await in between.
        at = time.monotonic()
        context.started_at = at
        url = str(params.url)
        authorization = params.headers.get("Authorization", "")
        if url.startswith(f"{self.fhir_base}/") and authorization:
            grant = hashlib.sha256(authorization.encode()).hexdigest()[:12]
            self.started.append(Started(at, url, grant))

    async def _end(
        self,
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestEndParams,
    ) -> None:
        # Runs after the gate heard the 429 and paused the tenant.
        if params.response.status == 429:
            self.throttled.append((context.started_at, time.monotonic()))


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
    watch = RequestWatch(sandbox.urls(GENERIC_TENANT).fhir_base)
    limiter = TenantLimiter()
    async with contexts(settings, sessionmaker, vault, 1, trace_configs=[watch.trace()]) as (ctx,):
        report = await run_due(ctx, limiter=limiter)

    assert report.sync == {"ok": 3}, report.to_json()
    gate = limiter.gate(tenant.id, tenant.vendor)
    assert gate.throttles == 1
    [(sent, heard)] = watch.throttled
    paused_until = gate.bucket.paused_until
    # The pause is the server's Retry-After from when the 429 came back (between the request
    # starting and the client hearing the answer): not capped, not cut.
    assert sent + RETRY_AFTER <= paused_until <= heard + RETRY_AFTER
    after = [s for s in watch.started if s.at > heard]
    # Paused: no request of the tenant started between the 429 and the end of the pause.
    early = [round(paused_until - s.at, 3) for s in after if s.at < paused_until]
    assert early == [], early
    # ... and no longer: the waiting connections were served once it ended (loosely bounded:
    # load may delay them, only a request that never came would fail this).
    assert after
    assert min(s.at for s in after) <= paused_until + SERVED_WITHIN
    # Every connection waited, not only the one that was answered 429 (each has its own token).
    assert len({s.grant for s in after}) >= 2
    # The throttled search itself was retried in place after the pause, and counted.
    assert any("/Condition?" in s.url for s in after)
    async with sessionmaker() as session:
        runs = list(await session.scalars(select(SyncRun)))
    assert sorted(run.retries for run in runs) == [0, 0, 1]
    assert {run.connection_id for run in runs} == set(ids)
