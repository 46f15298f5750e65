"""Readiness of one process (database, schema, tick) and the due backlog, for probes and metrics.

``/readyz`` (of ``serve`` and of a worker's metrics port) and the ``syncsvc_ready`` gauge are
computed here, so a probe and a scrape cannot disagree about the same process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db import connection_claims, health_repo, migrate
from syncsvc.logging import get_logger
from syncsvc.work_metrics import Snapshot

if TYPE_CHECKING:
    from syncsvc.sync.scheduler import SyncScheduler

log = get_logger("syncsvc.health.readiness")
#: A probe (or a scrape) gives up on the database after this long: someone is waiting.
READY_TIMEOUT_SECONDS = 5.0
#: The scheduler is stale when its last tick is older than this many tick intervals ...
SCHEDULER_STALE_TICKS = 6
#: ... or than this floor, whichever is longer (a tick of several batches takes a while).
SCHEDULER_STALE_FLOOR = dt.timedelta(seconds=60)
#: Check values that count as ready.
READY_VALUES = frozenset({"ok", "not_running"})

#: The newest migration in the source tree; read once, the files do not change under a process.
head_revision = functools.cache(migrate.head_revision)


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


async def database_checks(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, str]:
    """``database`` (ok, unreachable) and ``migrations`` (ok, not_at_head, unknown)."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            async with sessionmaker() as session:
                current = await health_repo.schema_revision(session)
    except (OSError, TimeoutError, SQLAlchemyError) as exc:
        # The class only: a driver's message may carry the DSN.
        log.warning("readiness: database unreachable", error_class=type(exc).__name__)
        return {"database": "unreachable", "migrations": "unknown"}
    head = head_revision()
    if current != head:
        log.warning("readiness: schema not at head", current=current, head=head)
        return {"database": "ok", "migrations": "not_at_head"}
    return {"database": "ok", "migrations": "ok"}


def scheduler_check(scheduler: SyncScheduler | None, tick_seconds: float, now: dt.datetime) -> str:
    """``not_running`` (this process has no tick), ``not_ticked``, ``stale`` or ``ok``."""
    if scheduler is None:
        return "not_running"
    if scheduler.last_tick_at is None:
        return "not_ticked"
    tick = dt.timedelta(seconds=tick_seconds)
    if now - scheduler.last_tick_at > max(tick * SCHEDULER_STALE_TICKS, SCHEDULER_STALE_FLOOR):
        return "stale"
    return "ok"


async def readiness(
    sessionmaker: async_sessionmaker[AsyncSession],
    scheduler: SyncScheduler | None,
    tick_seconds: float,
) -> tuple[bool, dict[str, str]]:
    """Whether the process is ready, and each check's value."""
    checks = await database_checks(sessionmaker)
    checks["scheduler"] = scheduler_check(scheduler, tick_seconds, utcnow())
    return all(value in READY_VALUES for value in checks.values()), checks


async def snapshot(
    sessionmaker: async_sessionmaker[AsyncSession],
    scheduler: SyncScheduler | None,
    tick_seconds: float,
) -> Snapshot:
    """Readiness and the due backlog, for a scrape (the backlog is left out when unreadable)."""
    ready, checks = await readiness(sessionmaker, scheduler, tick_seconds)
    if checks["database"] != "ok":
        return Snapshot(ready=False)
    now = utcnow()
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            async with sessionmaker() as session:
                due, oldest = await connection_claims.due_backlog(session, now)
    except (OSError, TimeoutError, SQLAlchemyError) as exc:
        log.warning("metrics: due backlog unreadable", error_class=type(exc).__name__)
        return Snapshot(ready=ready)
    waited = max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0
    return Snapshot(ready=ready, due_connections=due, oldest_due_seconds=waited)
