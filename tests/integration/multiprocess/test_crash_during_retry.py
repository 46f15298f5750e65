"""A worker SIGKILLed while it waits to retry a request in place loses nothing.

A Condition search answers 503 with ``Retry-After: 20`` on every request, so the worker's pull
waits in its retry while Observations are stored page by page. The worker is killed in that
wait: what it stored stays stored, nothing is recorded as done that was not, and a new worker,
once the EHR answers again, completes the record with nothing stored twice.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import func, select, update

from syncsvc.db.models import Connection, Resource, SyncRun, SyncState
from syncsvc.sandbox.config import FaultSpec, SandboxConfig
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.settings import Settings
from syncsvc.vault import Vault
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.scheduler import wait_until

from . import NANCY, Sessionmaker, Worker, connect_many, nancys_record, utcnow, worker_env

TYPES = ("Patient", "Condition", "Observation")
WITHIN = 60.0


@pytest.fixture
def sandbox_config(sandbox_config: SandboxConfig) -> SandboxConfig:
    """Nancy auto-approved, with a dozen pages of Observations."""
    tenant = next(t for t in sandbox_config.tenants if t.id == GENERIC_TENANT)
    tenant.policy.auto_approve_patient = NANCY
    tenant.patients[0].sizes = {"Condition": 3, "Observation": 600}
    return sandbox_config


async def _observations(sessionmaker: Sessionmaker) -> int:
    async with sessionmaker() as session:
        count = await session.scalar(
            select(func.count()).where(Resource.resource_type == "Observation")
        )
    return int(count or 0)


async def test_a_crash_while_waiting_to_retry_loses_nothing(
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    tmp_path: Path,
) -> None:
    _, (connection_id,) = await connect_many(
        sessionmaker, vault, http, sandbox, GENERIC_TENANT, 1, types=TYPES
    )
    expected = await nancys_record(sandbox, http, TYPES)
    sandbox.tenant(GENERIC_TENANT).faults[:] = [
        FaultSpec(kind="latency", latency_ms=40),
        FaultSpec(kind="status_503", target="Condition", with_retry_after=True, retry_after=20),
    ]
    env = worker_env(
        settings,
        tick_seconds=0.3,
        lease_seconds=3,
        sync_interval_seconds=3600,
        log_level="WARNING",
    )

    def condition_refused() -> bool:
        return any(
            "/Condition?" in e.url and e.status == 503 for e in list(sandbox.state.request_log)
        )

    async def waiting_in_retry() -> bool:
        return condition_refused() and await _observations(sessionmaker) >= 100

    worker = await Worker.start(env, tmp_path / "crashed.log")
    await wait_until(waiting_in_retry, within=WITHIN)
    worker.kill()
    assert await worker.wait() == -9, worker.log()[-2000:]
    killed_at = utcnow()

    # What was stored stays; nothing is recorded as done that was not.
    stored_before = await _observations(sessionmaker)
    assert stored_before >= 100
    async with sessionmaker() as session:
        [run] = list(await session.scalars(select(SyncRun)))
        condition = await session.get(SyncState, (connection_id, "Condition"))
    assert run.outcome == "running"
    assert run.finished_at is None
    assert condition is None or condition.watermark is None

    # The EHR recovers; another worker takes over once the dead one's lease has expired.
    sandbox.tenant(GENERIC_TENANT).faults[:] = []
    async with sessionmaker.begin() as session:
        await session.execute(update(Connection).values(next_sync_at=killed_at))

    async def completed() -> bool:
        async with sessionmaker() as session:
            finished = await session.scalar(
                select(func.count()).where(SyncRun.outcome == "ok", SyncRun.started_at >= killed_at)
            )
        return bool(finished)

    healthy = await Worker.start(env, tmp_path / "healthy.log")
    try:
        await wait_until(completed, within=WITHIN)
    finally:
        code = await healthy.terminate()
    assert code == 0, healthy.log()[-2000:]

    async with sessionmaker() as session:
        rows = list(
            await session.execute(
                select(Resource.resource_type, Resource.resource_id).where(
                    Resource.connection_id == connection_id
                )
            )
        )
    assert len(rows) == len(set(rows))  # nothing stored twice
    assert {(t, rid) for t, rid in rows} == expected
