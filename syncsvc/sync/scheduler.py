"""The background tick: APScheduler runs one short job that works whatever the database says is due.

There is one job per process, never one per connection: the database holds the schedule
(``next_refresh_at``, ``next_sync_at``) and leases decide who works what, so any number of
``serve`` and ``worker`` processes can share one PostgreSQL database. This module is the only one
that touches APScheduler (untyped), behind a small typed class.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from syncsvc.logging import get_logger
from syncsvc.sync.context import SyncContext
from syncsvc.sync.runner import WorkReport, run_due

log = get_logger("syncsvc.sync.scheduler")
#: A tick claims at most this many batches, so it ends and the next tick re-reads the schedule.
BATCHES_PER_TICK = 4
DRAIN_TIMEOUT_SECONDS = 30.0


class SyncScheduler:
    """Runs :func:`~syncsvc.sync.runner.run_due` every ``tick_seconds`` until stopped."""

    def __init__(self, ctx: SyncContext) -> None:
        self._ctx = ctx
        self._stopping = asyncio.Event()
        self._busy = asyncio.Lock()
        self._scheduler: Any = None
        self.last_tick_at: dt.datetime | None = None
        self.last_report: WorkReport | None = None
        self.ticks = 0

    def start(self) -> None:
        """Start ticking (the first tick runs at once)."""
        scheduler = AsyncIOScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=dt.UTC,
        )
        scheduler.add_job(
            self.tick,
            "interval",
            seconds=self._ctx.settings.tick_seconds,
            next_run_time=dt.datetime.now(dt.UTC),
            id="syncsvc-tick",
        )
        scheduler.start()
        self._scheduler = scheduler
        log.info("scheduler started", owner=self._ctx.owner, tick=self._ctx.settings.tick_seconds)

    async def tick(self) -> None:
        """Claim and work what is due now (one bounded round)."""
        if self._stopping.is_set():
            return
        async with self._busy:
            self.last_tick_at = self._ctx.now()
            self.ticks += 1
            try:
                report = await run_due(self._ctx, max_batches=BATCHES_PER_TICK, stop=self._stopping)
            except Exception:
                # The database may be briefly unreachable; the next tick tries again.
                log.exception("tick failed")
                return
            self.last_report = report
            if report.claimed:
                log.info("tick", **report.to_json())

    async def stop(self) -> None:
        """Stop claiming, let the running tick finish (its leases are released), then shut down."""
        self._stopping.set()
        if self._scheduler is not None:
            self._scheduler.pause()
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_SECONDS):
                async with self._busy:
                    pass
        except TimeoutError:
            log.warning("tick still running at shutdown; its leases expire on their own")
        if self._scheduler is not None:
            # wait=False: with wait=True APScheduler 3 cancels running coroutine jobs.
            self._scheduler.shutdown(wait=False)
        log.info("scheduler stopped", owner=self._ctx.owner)
