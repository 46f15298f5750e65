"""The background tick: APScheduler runs one short job that works whatever the database says is due.

There is one job per process, never one per connection: the database holds the schedule
(``next_refresh_at``, ``next_sync_at``) and leases decide who works what, so any number of
``serve`` and ``worker`` processes can share one PostgreSQL database. This module is the only one
that touches APScheduler (untyped), behind a small typed class. The per-tenant limits live as
long as the scheduler, so they hold across ticks.

A tick claims into the room the process's held work leaves and ends after most of
``tick_seconds``; what it claimed goes on working into the next ticks, which claim as room frees
(:class:`~syncsvc.sync.runner.Workload`). There is no fixed number of claims per tick and no
tick waits for its slowest connection while more is due.

Stopping: no new tick starts and the running one stops claiming; connections claimed but not
started are handed back at once, those in flight finish, and every lease is released.

After each round the tick runs its *chores*: outbox work that is not a sync (webhook delivery,
revocation retries, purges). They are handed in by whoever builds the scheduler, so the sync
engine does not import the lifecycle code that sits above it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from syncsvc.logging import get_logger
from syncsvc.sync.context import SyncContext
from syncsvc.sync.limits import TenantLimiter
from syncsvc.sync.runner import PullOptions, Workload, WorkReport
from syncsvc.sync.streak import FailureStreak

log = get_logger("syncsvc.sync.scheduler")
#: APScheduler's logger, which warns each time a tick is due while the previous one still runs.
APSCHEDULER_LOGGER = "apscheduler.scheduler"
DRAIN_TIMEOUT_SECONDS = 30.0
#: A tick claims for this share of ``tick_seconds`` at most, then ends (its work goes on), so
#: the next tick starts on time and claims on: a tick is never skipped for outlasting it.
CLAIM_SHARE_OF_TICK = 0.8


@dataclass(frozen=True, slots=True)
class Chore:
    """Work a tick does after its sync round; a failure is logged once per streak, per chore."""

    name: str
    work: Callable[[SyncContext], Awaitable[object]]
    #: At most this often (monotonic seconds); 0 runs it on every tick.
    every_seconds: float = 0.0


class _SkipNotice(logging.Filter):
    """Drops APScheduler's "maximum number of running instances reached" warning.

    A tick outlasting the interval is expected (``max_instances=1`` and ``coalesce`` exist for
    it); warning on every skipped interval would flood the log of a busy worker.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances" not in record.getMessage()


def _quiet_skips() -> None:
    logger = logging.getLogger(APSCHEDULER_LOGGER)
    if not any(isinstance(f, _SkipNotice) for f in logger.filters):
        logger.addFilter(_SkipNotice())


class SyncScheduler:
    """Runs :func:`~syncsvc.sync.runner.run_due` every ``tick_seconds`` until stopped."""

    def __init__(
        self,
        ctx: SyncContext,
        *,
        chores: Sequence[Chore],
        limiter: TenantLimiter | None = None,
    ) -> None:
        self._ctx = ctx
        self._chores = tuple(chores)
        self.limiter = limiter or TenantLimiter()
        self._stopping = asyncio.Event()
        self._busy = asyncio.Lock()
        self._scheduler: Any = None
        #: The connections this process holds, kept from tick to tick (made by the first).
        self._work: Workload | None = None
        self.last_tick_at: dt.datetime | None = None
        self.last_report: WorkReport | None = None
        self.ticks = 0
        #: When each chore is next due (monotonic clock); the first tick runs them all.
        self._next_due = {chore.name: 0.0 for chore in self._chores}
        url = ctx.settings.database_url
        self._tick_streak = FailureStreak(log, "tick", url)
        self._outbox_streaks = {
            chore.name: FailureStreak(log, "outbox", url, outbox=chore.name)
            for chore in self._chores
        }

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
        _quiet_skips()
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
            self._ctx.metrics.tick_started()
            try:
                report = await self._claim_and_work()
            except Exception as exc:
                # The database may be briefly unreachable; the next tick tries again. Logged
                # when the failing starts and when it ends, not every tick.
                self._ctx.metrics.tick(ok=False)
                self._tick_streak.failed(exc)
                return
            self._ctx.metrics.tick(ok=True)
            self._tick_streak.succeeded()
            self.last_report = report
            await self._work_outboxes()
            if report.claimed:
                log.info(
                    "tick", handed_back=report.handed_back, events=report.events, **report.to_json()
                )

    async def _claim_and_work(self) -> WorkReport:
        """Claim what is due into the room the held work leaves, for one tick's time at most.

        Work claimed here goes on after the tick returns while more is due: the next tick
        claims into the room it leaves, so a fleet due at once is claimed as room frees, never
        in rounds that wait for a round's slowest connection. The room (``sync_concurrency`` or
        ``claim_batch_size`` connections, a tenant's share of it) bounds what is held at once.
        Only when nothing more is due does the tick wait for its work, so its report is whole.
        """
        if self._work is None:
            self._work = Workload(
                self._ctx, limiter=self.limiter, stop=self._stopping, pull=PullOptions()
            )
        report = WorkReport()
        until = time.monotonic() + self._ctx.settings.tick_seconds * CLAIM_SHARE_OF_TICK
        if not await self._work.fill(report, until=until):
            await self._work.drain()
        return report

    async def _work_outboxes(self) -> None:
        """Run the chores that are due (each failure is its own)."""
        now = time.monotonic()
        for chore in self._chores:
            if now < self._next_due[chore.name]:
                continue
            self._next_due[chore.name] = now + chore.every_seconds
            streak = self._outbox_streaks[chore.name]
            try:
                await chore.work(self._ctx)
            except Exception as exc:
                streak.failed(exc)
            else:
                streak.succeeded()

    async def stop(self) -> None:
        """Stop claiming, let the running tick finish (its leases are released), then shut down."""
        self._stopping.set()
        if self._scheduler is not None:
            self._scheduler.pause()
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_SECONDS):
                async with self._busy:
                    if self._work is not None:
                        # Claimed but not started: handed back at once; running: they finish.
                        await self._work.drain()
        except TimeoutError:
            log.warning("work still running at shutdown; its leases expire on their own")
        if self._scheduler is not None:
            # wait=False: with wait=True APScheduler 3 cancels running coroutine jobs.
            self._scheduler.shutdown(wait=False)
        log.info("scheduler stopped", owner=self._ctx.owner)
