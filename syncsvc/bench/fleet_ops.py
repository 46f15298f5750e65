"""Scheduler, refresh and scale-out scenarios: the parts of syncsvc that are not per-resource."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection as Pipe
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.bench.ingest import BenchError, unlimited
from syncsvc.bench.measure import children_of, rss_mib
from syncsvc.bench.world import chunks
from syncsvc.db import connection_claims
from syncsvc.db.models.connections import Connection
from syncsvc.db.models.records import ResourceCursor, SyncRun
from syncsvc.logging import configure_logging
from syncsvc.process import tune_gc
from syncsvc.services import Services
from syncsvc.settings import Settings
from syncsvc.sync.context import SyncContext
from syncsvc.sync.runner import run_due

CLAIM_BATCH = 500
#: How long a worker process gets to settle before its RSS is read.
RSS_SETTLE_SECONDS = 4.0
#: Scale-out passes give up after this long.
SCALEOUT_TIMEOUT_SECONDS = 600.0
POLL_SECONDS = 0.1


async def claim_times(
    sessionmaker: async_sessionmaker[AsyncSession], rounds: int
) -> tuple[list[float], int]:
    """Milliseconds to lease a batch of due connections, per round (leases handed back after)."""
    times: list[float] = []
    claimed = 0
    for number in range(rounds):
        owner = f"bench-claim-{number}"
        now = dt.datetime.now(dt.UTC)
        started = time.perf_counter()
        async with sessionmaker.begin() as session:
            batch = await connection_claims.claim_due_connections(
                session, owner, now, 60, CLAIM_BATCH
            )
        times.append((time.perf_counter() - started) * 1000)
        claimed = len(batch)
        async with sessionmaker.begin() as session:
            await session.execute(
                update(Connection)
                .where(Connection.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
                .execution_options(synchronize_session=False)
            )
    return times, claimed


def worker_environment(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment of a ``syncsvc worker`` process on the benchmark's database and keys."""
    keys = ",".join(f"{key.kid}:{key.encoded()}" for key in settings.vault_keys)
    env = {
        **os.environ,
        "SYNCSVC_DATABASE_URL": settings.database_url,
        "SYNCSVC_VAULT_KEYS": keys,
        "SYNCSVC_LOG_LEVEL": "WARNING",
        "SYNCSVC_DATA_DIR": str(settings.data_dir),
    }
    if settings.decode_workers is not None:
        env["SYNCSVC_DECODE_WORKERS"] = str(settings.decode_workers)
    if settings.write_lanes is not None:
        env["SYNCSVC_WRITE_LANES"] = str(settings.write_lanes)
    env.update(extra)
    return env


async def worker_rss(settings: Settings) -> float:
    """RSS in MiB of a real ``syncsvc worker`` after a few ticks over the current database.

    Its page-decoding processes count too: what the service costs is the sum.
    """
    process = subprocess.Popen(  # noqa: ASYNC220 - a child we stop ourselves a few seconds later
        [sys.executable, "-m", "syncsvc", "worker"],
        env=worker_environment(settings, SYNCSVC_TICK_SECONDS="0.5"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await asyncio.sleep(RSS_SETTLE_SECONDS)
        if process.poll() is not None:
            raise BenchError(f"the worker exited early ({process.returncode})")
        return rss_mib(process.pid) + sum(rss_mib(child) for child in children_of(process.pid))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 30)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait, 10)


async def refresh_round(ctx: SyncContext, connection_ids: Sequence[str]) -> float:
    """Refreshes per second of ``connection_ids``, all due at once, through the runner."""
    started = time.perf_counter()
    report = await run_due(ctx, connection_ids=connection_ids, limiter=unlimited())
    seconds = time.perf_counter() - started
    refreshed = report.refresh.get("refreshed", 0)
    if refreshed != len(connection_ids):
        raise BenchError(f"a refresh round refreshed {refreshed}: {report.to_json()}")
    return refreshed / seconds


# --- scale-out --------------------------------------------------------------------------------


def _scale_worker(settings: Settings, pipe: Pipe) -> None:
    """Child process: the scheduler's tick with lifted tenant limits until the pipe closes."""
    configure_logging(log_format="console", log_level="WARNING")

    async def work() -> None:
        # A worker process as ``syncsvc worker`` builds it, with the tenant limits lifted.
        services = Services(settings, background=True, limiter=unlimited())
        async with services:
            tune_gc()
            services.start_background()
            pipe.send(services.owner)
            closed = asyncio.Event()
            asyncio.get_running_loop().add_reader(pipe.fileno(), closed.set)
            await closed.wait()
            await services.stop_background()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(work())


@contextlib.contextmanager
def scale_workers(settings: Settings, count: int) -> Any:
    """``count`` worker processes ticking on the database; yields their lease owner ids."""
    context = multiprocessing.get_context("spawn")
    started: list[tuple[Any, Pipe]] = []
    try:
        for _ in range(count):
            parent, child = context.Pipe()
            # Not daemonic: a worker starts its own page-decoding processes, as the service does.
            # It stops when its pipe closes, and the ``finally`` below terminates a straggler.
            process = context.Process(target=_scale_worker, args=(settings, child))
            process.start()
            child.close()
            started.append((process, parent))
        owners = []
        for _, parent in started:
            if not parent.poll(60):
                raise BenchError("a scale-out worker did not start")
            owners.append(parent.recv())
        yield owners
    finally:
        for process, parent in started:
            parent.close()
            process.join(30)
            if process.is_alive():
                process.terminate()
                process.join(10)


async def wait_for_runs(
    sessionmaker: async_sessionmaker[AsyncSession],
    connection_ids: Sequence[str],
    since: dt.datetime,
) -> float:
    """Wait until every connection has finished a run started after ``since`` and is leased to
    no worker any more (a worker's last step: closing the run comes before); the seconds."""
    ids = list(connection_ids)
    started = time.perf_counter()
    while time.perf_counter() - started < SCALEOUT_TIMEOUT_SECONDS:
        done = leased = 0
        async with sessionmaker() as session:
            for chunk in chunks(ids):
                done += (
                    await session.scalar(
                        select(func.count(func.distinct(SyncRun.connection_id))).where(
                            SyncRun.connection_id.in_(chunk),
                            SyncRun.started_at >= since,
                            SyncRun.outcome != "running",
                        )
                    )
                    or 0
                )
                leased += (
                    await session.scalar(
                        select(func.count()).where(
                            Connection.id.in_(chunk), Connection.lease_owner.is_not(None)
                        )
                    )
                    or 0
                )
        if done == len(ids) and leased == 0:
            return time.perf_counter() - started
        await asyncio.sleep(POLL_SECONDS)
    raise BenchError("scale-out did not finish in time")


async def double_work(
    sessionmaker: async_sessionmaker[AsyncSession],
    connection_ids: Sequence[str],
    since: dt.datetime,
    per_connection: int,
) -> dict[str, Any]:
    """Evidence that no connection was worked twice: runs, owners and seqs per connection."""
    ids = list(connection_ids)
    runs: list[Any] = []
    seqs: list[Any] = []
    async with sessionmaker() as session:
        for chunk in chunks(ids):
            runs += (
                await session.execute(
                    select(SyncRun.connection_id, SyncRun.owner).where(
                        SyncRun.connection_id.in_(chunk), SyncRun.started_at >= since
                    )
                )
            ).all()
            seqs += (
                await session.execute(
                    select(ResourceCursor.connection_id, ResourceCursor.last_seq).where(
                        ResourceCursor.connection_id.in_(chunk)
                    )
                )
            ).all()
    per: dict[str, int] = {}
    owners: dict[str, int] = {}
    for connection_id, owner in runs:
        per[connection_id] = per.get(connection_id, 0) + 1
        owners[str(owner)] = owners.get(str(owner), 0) + 1
    rewritten = [cid for cid, last in seqs if int(last) != per_connection]
    return {
        "connections": len(ids),
        "runs": len(runs),
        "connections_run_twice": sum(1 for n in per.values() if n > 1),
        "connections_with_extra_writes": len(rewritten),
        "runs_per_worker": sorted(owners.values(), reverse=True),
    }
