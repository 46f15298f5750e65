"""Working what is due: claim connections with a lease, refresh and pull each, release.

The database says what is due (``next_refresh_at``, ``next_sync_at``); the lease says who works
it. One call of :func:`run_due` claims batches until nothing due is left (or ``max_batches``),
works each batch with bounded concurrency, and hands every lease back, whatever happened. The
scheduler's tick, ``syncsvc sync --once`` and the demo all come through here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from syncsvc.db import repo
from syncsvc.db.models import Connection
from syncsvc.errors import SyncsvcError
from syncsvc.logging import get_logger
from syncsvc.sync.backoff import Backoff
from syncsvc.sync.context import SyncContext
from syncsvc.sync.pull import RunSummary, pull_connection
from syncsvc.sync.refresh import ensure_access_token, refresh_connection

log = get_logger("syncsvc.sync.runner")

#: A failed pull is retried on this schedule (Retry-After wins when the EHR gives one).
SYNC_BACKOFF = Backoff(base_seconds=30.0, cap_seconds=6 * 3600.0)
#: One run_due call stops claiming after this many batches, so a tick always ends.
DEFAULT_MAX_BATCHES = 50


@dataclass
class WorkReport:
    """What one :func:`run_due` call did."""

    claimed: int = 0
    refresh: Counter[str] = field(default_factory=Counter)
    sync: Counter[str] = field(default_factory=Counter)
    resources: Counter[str] = field(default_factory=Counter)
    failures: int = 0

    @property
    def connections_worked(self) -> int:
        """How many connections were claimed and worked."""
        return self.claimed

    def add(self, other: WorkReport) -> None:
        """Add ``other``'s counts to this report."""
        self.claimed += other.claimed
        self.refresh.update(other.refresh)
        self.sync.update(other.sync)
        self.resources.update(other.resources)
        self.failures += other.failures

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (``sync --once`` prints it)."""
        return {
            "connections": self.claimed,
            "refresh": dict(self.refresh),
            "sync": dict(self.sync),
            "resources": dict(self.resources),
            "failures": self.failures,
        }


def _is_due(moment: dt.datetime | None, now: dt.datetime) -> bool:
    return moment is not None and moment <= now


async def _schedule_after_sync(
    ctx: SyncContext, connection_id: str, summary: RunSummary, failures: int
) -> None:
    """Set ``next_sync_at`` from the run's outcome (back off on transient failures)."""
    now = ctx.now()
    next_sync: dt.datetime | None
    if summary.outcome in ("ok", "partial", "error"):
        next_sync = now + dt.timedelta(seconds=ctx.settings.sync_interval_seconds)
        failures = 0
    elif summary.outcome == "transient":
        failures += 1
        next_sync = now + dt.timedelta(
            seconds=SYNC_BACKOFF.delay(failures, retry_after=summary.retry_after)
        )
    else:
        # misbound, reauth, inactive: the connection's status says why; nothing is retried.
        next_sync = None
    async with ctx.sessionmaker.begin() as session:
        connection = await repo.get_connection(session, connection_id)
        if connection is not None:
            connection.next_sync_at = next_sync if connection.status == "active" else None
            connection.failure_count = failures
            connection.updated_at = now


async def work_connection(ctx: SyncContext, connection: Connection, report: WorkReport) -> None:
    """Refresh and/or pull one leased connection, as due; never raises for EHR trouble."""
    bound = log.bind(connection_id=connection.id)
    now = ctx.now()
    if _is_due(connection.next_refresh_at, now):
        result = await refresh_connection(ctx, connection.id)
        report.refresh[result.outcome] += 1
        if result.outcome in ("needs_reauth", "lost_lease"):
            return
    if not _is_due(connection.next_sync_at, now):
        return

    async def token_source(force: bool) -> str:
        tokens = await ensure_access_token(ctx, connection.id, force=force)
        if tokens.access_token is None:  # pragma: no cover - ensure_access_token guarantees it
            raise SyncsvcError("no access token")
        return tokens.access_token

    summary = await pull_connection(ctx, connection.id, token_source)
    report.sync[summary.outcome] += 1
    for name, value in summary.counts.as_dict().items():
        report.resources[name] += value
    await _schedule_after_sync(ctx, connection.id, summary, connection.failure_count)
    bound.debug("connection worked", outcome=summary.outcome)


async def _work_leased(
    ctx: SyncContext, connection: Connection, report: WorkReport, limit: asyncio.Semaphore
) -> None:
    async with limit:
        try:
            await work_connection(ctx, connection, report)
        except Exception:
            # One connection's unexpected failure must not stop the batch; it is logged with
            # its id and retried when its lease expires or is released.
            report.failures += 1
            log.exception("connection work failed", connection_id=connection.id)
        finally:
            async with ctx.sessionmaker.begin() as session:
                await repo.release_lease(session, connection.id, ctx.owner)


async def claim(
    ctx: SyncContext,
    limit: int,
    *,
    tenant_id: str | None = None,
    connection_ids: Sequence[str] | None = None,
) -> list[Connection]:
    """Lease up to ``limit`` due connections to this process (one short transaction)."""
    async with ctx.sessionmaker.begin() as session:
        return await repo.claim_due_connections(
            session,
            ctx.owner,
            ctx.now(),
            ctx.settings.lease_seconds,
            limit,
            tenant_id=tenant_id,
            connection_ids=connection_ids,
        )


async def run_due(
    ctx: SyncContext,
    *,
    tenant_id: str | None = None,
    connection_ids: Sequence[str] | None = None,
    max_batches: int = DEFAULT_MAX_BATCHES,
    stop: asyncio.Event | None = None,
) -> WorkReport:
    """Claim and work due connections until none is left, ``max_batches`` or ``stop`` is set."""
    report = WorkReport()
    concurrency = asyncio.Semaphore(ctx.settings.sync_concurrency)
    for _ in range(max_batches):
        if stop is not None and stop.is_set():
            break
        batch = await claim(
            ctx,
            ctx.settings.claim_batch_size,
            tenant_id=tenant_id,
            connection_ids=connection_ids,
        )
        if not batch:
            break
        report.claimed += len(batch)
        async with asyncio.TaskGroup() as group:
            for connection in batch:
                group.create_task(_work_leased(ctx, connection, report, concurrency))
    return report
