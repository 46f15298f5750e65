"""The fleet's shape worked by three worker processes on one PostgreSQL, at latency: each due
sync runs exactly once.

Cerner-shaped (570 s tokens, no rotation) and Epic-shaped (rolling refresh tokens) connections,
as ``syncsvc bench --scenario fleet`` makes them, through the sandbox's real authorization flow;
every FHIR and token answer is delayed, so many runs are in flight in every worker at once and a
second claim of a connection would have every chance to happen. The proof is read from what the
workers cannot fake: the database's run records, and the sandbox's request log against the
requests each run recorded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import select

from syncsvc.bench import fleet_day, world
from syncsvc.bench.ingest import set_latency
from syncsvc.db.models.records import SyncRun
from syncsvc.sandbox.config import ClientRegistration, SandboxConfig
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.settings import Settings
from syncsvc.vault import Vault
from tests.integration.scheduler import overlapping

from . import Sessionmaker, Worker, utcnow, worker_env

FLEET = 30
WORKERS = 3
LATENCY_MS = 100
#: After the last run finished, the workers keep ticking this long: a second run would show.
SETTLE_SECONDS = 2.0
RUN_DEADLINE_SECONDS = 120.0

pytestmark = pytest.mark.slow


@pytest.fixture
def sandbox_config(sandbox_config: SandboxConfig) -> SandboxConfig:
    """The fleet's two tenants beside the defaults, and the bench's client registered."""
    sandbox_config.tenants.extend(fleet_day.tenants(FLEET))
    sandbox_config.clients.append(
        ClientRegistration(client_id=world.CLIENT_ID, redirect_uris=[world.REDIRECT_URI])
    )
    return sandbox_config


async def _connect(
    sessionmaker: Sessionmaker, vault: Vault, http: aiohttp.ClientSession, sandbox: RunningSandbox
) -> dict[str, str]:
    """The fleet connected through real launches; the sandbox tenant of each connection."""
    tenant_of: dict[str, str] = {}
    for sandbox_tenant, count in fleet_day.split(FLEET).items():
        urls = sandbox.urls(sandbox_tenant)
        tenant = await world.register(
            sessionmaker,
            vault,
            http,
            urls.fhir_base,
            name=f"{sandbox_tenant}-{secrets.token_hex(3)}",
            resource_types=fleet_day.FLEET_TYPES,
        )
        connector = world.Connector(sessionmaker, vault, http, tenant, urls.authorize)
        ids = await connector.connect_many(
            [fleet_day.patient(sandbox_tenant, i) for i in range(count)],
            user_prefix=f"fleet-{secrets.token_hex(3)}",
            next_refresh_at=utcnow() + dt.timedelta(days=1),
            next_sync_at=None,
        )
        tenant_of.update(dict.fromkeys(ids, sandbox_tenant))
        await set_latency(http, sandbox.origin, sandbox_tenant, LATENCY_MS, token=True)
    return tenant_of


async def test_three_workers_run_each_due_sync_of_the_fleet_exactly_once(
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    tmp_path: Path,
) -> None:
    tenant_of = await _connect(sessionmaker, vault, http, sandbox)
    ids = list(tenant_of)
    env = worker_env(
        settings,
        tick_seconds=0.2,
        claim_batch_size=4,
        sync_concurrency=6,
        sync_interval_seconds=3600,
        log_level="WARNING",
    )
    workers = [
        await Worker.start(env, tmp_path / f"worker-{index}.log") for index in range(WORKERS)
    ]
    try:
        since_sandbox = sandbox.state.now()
        since = utcnow()
        await world.make_due(sessionmaker, ids)
        async with asyncio.timeout(RUN_DEADLINE_SECONDS):
            while len(await _finished(sessionmaker, since)) < FLEET:
                assert all(w.alive for w in workers), [w.log()[-2000:] for w in workers]
                await asyncio.sleep(0.2)
        await asyncio.sleep(SETTLE_SECONDS)
    finally:
        codes = [await w.terminate() for w in workers]
    assert codes == [0] * WORKERS, [w.log()[-2000:] for w in workers]

    async with sessionmaker() as session:
        runs = list(
            await session.scalars(
                select(SyncRun).where(SyncRun.started_at >= since, SyncRun.connection_id.in_(ids))
            )
        )
    # Exactly one run per due connection, each complete, none overlapping another.
    per_connection = Counter(run.connection_id for run in runs)
    assert per_connection == Counter(dict.fromkeys(ids, 1))
    assert {run.outcome for run in runs} == {"ok"}
    assert overlapping(runs) == []
    # The work was shared: more than one worker ran syncs.
    assert len({run.owner for run in runs}) >= 2
    # At the added latency: no run finished sooner than one delayed answer.
    shortest = min((run.finished_at or run.started_at) - run.started_at for run in runs)
    assert shortest >= dt.timedelta(milliseconds=LATENCY_MS)
    # Every FHIR request the sandbox answered for the fleet is one some run recorded: no
    # connection was pulled by a second, unrecorded hand.
    logged = Counter(
        entry.tenant_id
        for entry in sandbox.state.request_log
        if entry.at >= since_sandbox and entry.token_id and entry.tenant_id is not None
    )
    recorded: Counter[str] = Counter()
    for run in runs:
        recorded[tenant_of[run.connection_id]] += run.requests
    assert logged == recorded
    assert sum(recorded.values()) >= FLEET * len(fleet_day.FLEET_TYPES)


async def _finished(sessionmaker: Sessionmaker, since: dt.datetime) -> list[str]:
    async with sessionmaker() as session:
        rows = await session.scalars(
            select(SyncRun.connection_id).where(
                SyncRun.started_at >= since, SyncRun.outcome != "running"
            )
        )
        return list(rows)
