"""A worker SIGKILLed while it waits to retry a request in place loses nothing.

A Condition search answers 503 with ``Retry-After: 20`` on every request, so the worker's pull
waits in its retry while Observations are stored page by page. The worker is killed in that
wait (its own log says it is retrying, and the EHR saw the refused search): what it stored stays
stored, nothing is recorded as done that was not, and a new worker, once the EHR answers again,
completes the record with each resource stored exactly once (one seq each, none rewritten).
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import func, select, update

from syncsvc.db.models.connections import Connection
from syncsvc.db.models.records import Resource, ResourceCursor, ResourceHistory, SyncRun, SyncState
from syncsvc.sandbox.config import FaultSpec, SandboxConfig
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.settings import Settings
from syncsvc.vault import Vault
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.scheduler import wait_until

from . import NANCY, Sessionmaker, Worker, connect_many, nancys_record, utcnow, worker_env

TYPES = ("Patient", "Condition", "Observation")
#: (type, id) -> (seq, content hash) of each stored resource.
Stored = dict[tuple[str, str], tuple[int, str]]
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
    timings: dict[str, str | int | float] = {
        "tick_seconds": 0.3,
        "lease_seconds": 3,
        "sync_interval_seconds": 3600,
    }
    env = worker_env(settings, **timings, log_level="WARNING")
    # The worker to be killed logs at debug level, so that its "request retried" line shows it
    # is inside the retry wait when the kill comes.
    crashing_env = worker_env(settings, **timings, log_level="DEBUG")

    def condition_refused() -> bool:
        return any(
            "/Condition?" in e.url and e.status == 503 for e in list(sandbox.state.request_log)
        )

    worker = await Worker.start(crashing_env, tmp_path / "crashed.log")

    async def waiting_in_retry() -> bool:
        return (
            condition_refused()
            and _retrying(worker.log())
            and await _observations(sessionmaker) >= 100
        )

    await wait_until(waiting_in_retry, within=WITHIN)
    worker.kill()
    assert await worker.wait() == -9, worker.log()[-2000:]
    killed_at = utcnow()

    # What was stored stays; nothing is recorded as done that was not.
    stored_before = await _observations(sessionmaker)
    assert stored_before >= 100
    before = await _stored(sessionmaker, connection_id)
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

    after = await _stored(sessionmaker, connection_id)
    assert set(after) == expected  # the whole record, as the sandbox holds it
    # Each resource was written exactly once: one seq each, consecutive, the cursor at the last
    # one, no earlier version kept as history; and what the dead worker stored was not rewritten.
    seqs = sorted(seq for seq, _ in after.values())
    assert seqs == list(range(seqs[0], seqs[0] + len(expected)))
    async with sessionmaker() as session:
        cursor = await session.get(ResourceCursor, connection_id)
        history = await session.scalar(
            select(func.count()).where(ResourceHistory.connection_id == connection_id)
        )
    assert cursor is not None
    assert cursor.last_seq == seqs[-1]
    assert history == 0
    assert before
    assert {key: after[key] for key in before} == before


def _retrying(log: str) -> bool:
    """Whether a worker's JSON log has the line of a request retried after a 503."""
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == "request retried":
            return True
    return False


async def _stored(
    sessionmaker: Sessionmaker, connection_id: str
) -> dict[tuple[str, str], tuple[int, str]]:
    """Each stored resource of the connection: its (seq, content hash)."""
    async with sessionmaker() as session:
        rows = await session.execute(
            select(
                Resource.resource_type, Resource.resource_id, Resource.seq, Resource.content_hash
            ).where(Resource.connection_id == connection_id)
        )
        return {(t, rid): (int(seq), str(digest)) for t, rid, seq, digest in rows}
