"""Working what is due: claim connections with a lease, refresh and pull each, release.

The database says what is due (``next_refresh_at``, ``next_sync_at``); the lease says who works
it. One call of :func:`run_due` claims until nothing due is left (or its budget is spent), works
each claimed connection as soon as a slot allows, and hands every lease back, whatever happened:
claims refill the room released connections leave, so nothing waits for a batch to end.
``syncsvc sync --once`` and the demo come through here; the scheduler keeps one
:class:`Workload` across its ticks, so its work is not bounded by a tick either.

While a connection is held its lease is renewed every third of ``lease_seconds``, so a lease
expires only when its process died or stalled, never because a pull ran long or waited for its
tenant's turn: only then may another process take the connection over. Each connection is
worked under its tenant's limits (:mod:`syncsvc.sync.limits`): tenant slots are taken before the
process-wide ones, so connections waiting for a busy tenant never block other tenants. When
``stop`` is set, connections not yet started are handed back at once and running ones finish.
Every connection's run ends in one transaction that hands its lease back, stamps its last sync,
schedules its next pull and records its events (:mod:`syncsvc.sync.outcomes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import connection_claims, repo
from syncsvc.db.connection_claims import DueConnection
from syncsvc.db.models.connections import Connection, Tenant
from syncsvc.errors import Transient
from syncsvc.logging import get_logger
from syncsvc.sync import webhook_outbox
from syncsvc.sync.backoff import Backoff
from syncsvc.sync.context import SyncContext
from syncsvc.sync.limits import TenantGate, TenantLimiter
from syncsvc.sync.outcomes import ConnectionRun, record_run
from syncsvc.sync.pull import announce_run, close_run, pull_connection
from syncsvc.sync.refresh import refresh_connection, reschedule_refresh
from syncsvc.sync.refresh_scopes import widened_since
from syncsvc.sync.run_records import RunSummary, TypeResult
from syncsvc.sync.token_source import TokenSource

log = get_logger("syncsvc.sync.runner")

#: A failed pull is retried on this schedule (Retry-After wins when the EHR gives one).
SYNC_BACKOFF = Backoff(base_seconds=30.0, cap_seconds=6 * 3600.0)
#: One run_due call stops claiming after this many batches, so a tick always ends.
DEFAULT_MAX_BATCHES = 50
#: Leases are renewed this many times per ``lease_seconds`` while their connection is worked.
RENEWALS_PER_LEASE = 3
#: Leases renewed by one statement.
RENEWAL_CHUNK = 500
#: A tenant's claimed connections are capped at this many times its connection limit.
TENANT_BACKLOG = 2
#: A new claim waits until this share (1/n) of the claim size is free again.
REFILL_FRACTION = 4


@dataclass
class WorkReport:
    """What one :func:`run_due` call did."""

    claimed: int = 0
    refresh: Counter[str] = field(default_factory=Counter)
    sync: Counter[str] = field(default_factory=Counter)
    resources: Counter[str] = field(default_factory=Counter)
    failures: int = 0
    #: Claimed connections handed back unworked because ``stop`` was set.
    handed_back: int = 0
    events: int = 0

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
        self.handed_back += other.handed_back
        self.events += other.events

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


class _Leases:
    """The leases of the claimed connections, renewed until each connection is released."""

    def __init__(self, ctx: SyncContext, connection_ids: Sequence[str]) -> None:
        self._ctx = ctx
        self.pending = set(connection_ids)
        #: Leases found expired and possibly taken over (this process stalled past them).
        self.lost: set[str] = set()

    async def renew(self) -> None:
        """Renew every pending lease; note the ones that were lost.

        :data:`RENEWAL_CHUNK` leases a transaction: one per lease queued a thousand held
        connections' renewals behind their own work for the database's pool, until leases
        expired under a busy process. Rows locked by another transaction at that moment are
        skipped, never waited for (see :func:`~syncsvc.db.connection_claims.renew_leases`).
        """
        pending = sorted(self.pending - self.lost)
        for start in range(0, len(pending), RENEWAL_CHUNK):
            chunk = pending[start : start + RENEWAL_CHUNK]
            async with self._ctx.sessionmaker.begin() as session:
                lost = await connection_claims.renew_leases(
                    session,
                    chunk,
                    self._ctx.owner,
                    now=self._ctx.now(),
                    lease_seconds=self._ctx.settings.lease_seconds,
                )
            for connection_id in sorted(lost):
                if connection_id in self.pending:
                    self.lost.add(connection_id)
                    log.warning("lease lost while working", connection_id=connection_id)

    async def keep_alive(self) -> None:
        """Renew pending leases every third of ``lease_seconds`` until cancelled."""
        interval = self._ctx.settings.lease_seconds / RENEWALS_PER_LEASE
        while True:
            await asyncio.sleep(interval)
            try:
                await self.renew()
            except Exception:
                # The database may blip; the next renewal (well before expiry) tries again.
                log.exception("lease renewal failed")

    def check(self, connection_id: str) -> None:
        """Raise :class:`Transient` if this connection's lease was lost (stop working it)."""
        if connection_id in self.lost:
            raise Transient("The lease on this connection was lost.", reason="lost_lease")


async def _schedule_after_sync(
    ctx: SyncContext,
    session: AsyncSession,
    connection: repo.ConnectionSchedule,
    summary: RunSummary,
    *,
    expiry: repo.TokenLifetimes | None,
) -> dict[str, Any]:
    """The columns that set ``next_sync_at`` from the run's outcome (back off on transient
    failures), and the refresh that the next sync will need."""
    now = ctx.now()
    # The count as stored now: a refresh during this run may have changed it.
    failures = connection.failure_count
    next_sync: dt.datetime | None
    if summary.outcome in ("ok", "partial", "error"):
        # The soonest of the types' own schedules: a type that failed is retried on its own
        # back-off, the others after the interval.
        next_sync = summary.next_due_at or now + dt.timedelta(
            seconds=ctx.settings.sync_interval_seconds
        )
        # A refresh during the run that widened the grant made the connection due for what it
        # added (``rescope``); the run planned without it, so the next claim pulls it.
        if summary.granted_scopes is not None and await widened_since(
            session, connection.tenant_id, connection.granted_scopes, summary.granted_scopes
        ):
            next_sync = min(next_sync, now)
        failures = 0
    elif summary.outcome == "transient":
        failures += 1
        next_sync = now + dt.timedelta(
            seconds=SYNC_BACKOFF.delay(failures, retry_after=summary.retry_after)
        )
    else:
        # misbound, reauth, inactive: the connection's status says why; nothing is retried.
        next_sync = None
    connection.next_sync_at = next_sync if connection.status == "active" else None
    await reschedule_refresh(session, ctx, connection, now=now, expiry=expiry)
    return {
        "next_sync_at": connection.next_sync_at,
        "next_refresh_at": connection.next_refresh_at,
        "failure_count": failures,
        "updated_at": now,
    }


async def _close_run(
    ctx: SyncContext,
    connection_id: str,
    run: ConnectionRun,
    *,
    report: WorkReport,
    tenant: str,
    leases: _Leases | None = None,
) -> bool:
    """One unit of the connection's group writer: schedule the next pull (if this process still
    holds the lease), events, and the lease handed back. Going through the writer, the closes
    of runs ending together share a transaction rather than each costing one (and its commit).

    Returns whether the lease was handed back here (otherwise the caller releases it).
    """
    summary = run.summary
    if summary is None and not run.refreshes:
        return False

    async def close(session: AsyncSession) -> tuple[int, bool]:
        # The unit runs again if its group fails, so it returns the events it added, never adds.
        released = False
        if summary is not None:
            # The run record ends here, with the write that schedules the next run.
            await close_run(session, summary)
            if leases is not None:
                # Renewals stop here: one that ran after this commit would find the lease gone
                # and take it for lost.
                leases.pending.discard(connection_id)
            # A process that stalled past its lease must not overwrite the schedule of the
            # process that took the connection over. The row is read locked (PostgreSQL), and
            # the lease is handed back by the UPDATE that sets the next schedule, only if it is
            # still this process's: the run's last write, in the same transaction.
            found = await repo.connection_schedule(session, connection_id, lock=True)
            if found is not None:
                connection, expiry = found
                stamps: dict[str, Any] = {}
                if summary.run_id is not None:
                    # Stamped here, in the UPDATE that schedules the next pull (the pull
                    # left it to this write).
                    stamps["last_sync_at"] = summary.finished_at
                    if summary.succeeded:
                        stamps["last_success_at"] = summary.finished_at
                if connection.lease_owner == ctx.owner:
                    schedule = await _schedule_after_sync(
                        ctx, session, connection, summary, expiry=expiry
                    )
                    released = await connection_claims.release_held_lease(
                        session, connection_id, ctx.owner, now=ctx.now(), setting=stamps | schedule
                    )
                if not released and stamps:
                    await repo.update_connection(session, connection_id, **stamps)
        added = await record_run(session, run, at=ctx.now())
        await _notify_host_app(ctx, session, connection_id, run)
        return added, released

    added, released = await ctx.pages.run(connection_id, close, beside_pages=True)
    if summary is not None:
        announce_run(ctx, tenant, summary)
    report.events += added
    # Counted from the events just committed, so the counter and the events agree.
    meter = ctx.metrics.tenant(tenant)
    for record in run.events():
        if record.kind == "refresh":
            meter.refresh(record.outcome)
    return released


async def _notify_host_app(
    ctx: SyncContext, session: AsyncSession, connection_id: str, run: ConnectionRun
) -> None:
    """Queue the host application's webhook for what this run did (in the caller's transaction)."""
    if ctx.settings.webhook_url is None:
        return
    connection = await repo.get_connection(session, connection_id)
    if connection is None:
        return
    summary, now = run.summary, ctx.now()
    if connection.status == "needs_reauth":
        event, data = "connection.needs_reauth", _status_data(connection)
    elif connection.status == "misbound":
        event, data = "connection.misbound", _status_data(connection)
    elif connection.status == "no_access":
        event, data = "connection.no_access", _status_data(connection)
    elif summary is not None and summary.outcome in ("ok", "partial"):
        event = "sync.completed"
        data = {
            "run_id": summary.run_id,
            "outcome": summary.outcome,
            "counts": summary.counts.as_dict(),
            "full": summary.full,
            # Each type's state as the pages show it (a failing type says so here too).
            "types": {
                name: {
                    "status": result.status,
                    "error_class": result.error_class,
                    "next_attempt_at": result.next_attempt_at,
                }
                for name, result in summary.types.items()
            },
        }
    else:
        return
    await webhook_outbox.enqueue(
        session, ctx.settings, event, connection=connection, data=data, now=now
    )


def _status_data(connection: Connection) -> dict[str, Any]:
    return {
        "reason": connection.status_reason,
        "message": connection.status_message,
        "error_uri": connection.error_uri,
    }


@dataclass(frozen=True)
class PullOptions:
    """How due pulls run: ``full`` forces full pulls; ``on_type`` hears each finished type."""

    full: bool = False
    on_type: Callable[[str, TypeResult], None] | None = None


async def work_connection(
    ctx: SyncContext,
    connection: DueConnection,
    report: WorkReport,
    *,
    leases: _Leases | None = None,
    pull: PullOptions = PullOptions(),
    tenant: str,
) -> bool:
    """Refresh and/or pull one leased connection, as due; never raises for EHR trouble.

    ``tenant`` is the connection's tenant name (the label of its metrics). Returns whether the
    lease was handed back with the run's last write (a run that pulled); otherwise the caller
    releases it.
    """
    run = ConnectionRun(tenant_id=connection.tenant_id, connection_id=connection.id)
    try:
        await _work(ctx, connection, report, run, leases=leases, pull=pull)
    finally:
        released = await _close_run(
            ctx, connection.id, run, report=report, tenant=tenant, leases=leases
        )
    if run.summary is not None:
        log.debug("connection worked", connection_id=connection.id, outcome=run.summary.outcome)
    return released


async def _work(
    ctx: SyncContext,
    connection: DueConnection,
    report: WorkReport,
    run: ConnectionRun,
    *,
    leases: _Leases | None,
    pull: PullOptions,
) -> None:
    now = ctx.now()
    known = None
    read = None
    if _is_due(connection.next_refresh_at, now):
        result = await refresh_connection(ctx, connection.id)
        run.refreshes.append(result)
        report.refresh[result.outcome] += 1
        if result.outcome in ("needs_reauth", "misbound", "lost_lease"):
            return
        if result.outcome in ("refreshed", "not_due"):
            known, read = result.tokens, result.read
    if not _is_due(connection.next_sync_at, now):
        return

    source = TokenSource(
        ctx,
        connection.id,
        # Checked before every request: a pull stops at the next page once the lease is gone,
        # rather than racing the process that took the connection over.
        lease_check=None if leases is None else functools.partial(leases.check, connection.id),
        on_refresh=run.refreshes.append,
        known=known,
    )
    on_type = pull.on_type
    summary = await pull_connection(
        ctx,
        connection.id,
        source,
        full=pull.full,
        on_type=None if on_type is None else lambda result: on_type(connection.id, result),
        caller_closes=True,
        read=read,
    )
    run.summary = summary
    report.sync[summary.outcome] += 1
    for name, value in summary.counts.as_dict().items():
        report.resources[name] += value


async def _work_leased(
    ctx: SyncContext,
    connection: DueConnection,
    report: WorkReport,
    *,
    gate: TenantGate,
    concurrency: asyncio.Semaphore,
    leases: _Leases,
    stop: asyncio.Event | None,
    pull: PullOptions,
    tenant: str,
) -> None:
    released = False
    failed = False
    try:
        # The tenant's slot first: a connection waiting for its tenant holds no process slot.
        async with gate.working(), concurrency:
            if stop is not None and stop.is_set():
                report.handed_back += 1
                return
            if connection.id in leases.lost:
                return
            released = await work_connection(
                ctx, connection, report, leases=leases, pull=pull, tenant=tenant
            )
    except Exception:
        # One connection's unexpected failure must not stop the batch; it is logged with
        # its id and retried when its lease expires or is released.
        report.failures += 1
        failed = True
        log.exception("connection work failed", connection_id=connection.id)
    finally:
        leases.pending.discard(connection.id)
        leases.lost.discard(connection.id)
        if not released:
            release = functools.partial(_release, ctx, connection.id, failed=failed)
            await ctx.pages.run(connection.id, release, beside_pages=True)


async def _release(
    ctx: SyncContext, connection_id: str, session: AsyncSession, *, failed: bool
) -> bool:
    """Hand the lease back; after an unexpected failure, with a back-off before the next try.

    Without one, a failure that repeats (a database refusing connections, a bug one record
    trips) would be claimed again at every tick, each time calling the EHR again.
    """
    if not failed:
        return await connection_claims.release_lease(session, connection_id, ctx.owner)
    found = await repo.connection_schedule(session, connection_id)
    failures = (0 if found is None else found[0].failure_count) + 1
    now = ctx.now()
    retry_at = SYNC_BACKOFF.retry_at(now, failures)
    setting = {"backoff_until": retry_at, "failure_count": failures, "updated_at": now}
    return await connection_claims.release_held_lease(
        session, connection_id, ctx.owner, now=now, setting=setting
    )


async def claim(
    ctx: SyncContext,
    limit: int,
    *,
    tenant_id: str | None = None,
    connection_ids: Sequence[str] | None = None,
    exclude_tenants: Sequence[str] = (),
) -> list[DueConnection]:
    """Lease up to ``limit`` due connections to this process (one short transaction)."""
    started = time.perf_counter()
    async with ctx.sessionmaker.begin() as session:
        claimed = await connection_claims.claim_due_connections(
            session,
            ctx.owner,
            ctx.now(),
            ctx.settings.lease_seconds,
            limit,
            tenant_id=tenant_id,
            connection_ids=connection_ids,
            exclude_tenants=exclude_tenants,
        )
    ctx.metrics.claim(len(claimed), time.perf_counter() - started)
    return claimed


class Workload:
    """The connections a process holds: claimed, worked, released one by one.

    There is no batch to wait for: each connection is released when its own work ends, and
    the room it leaves is claimed again while due work remains, so one slow connection holds
    one slot, not a batch. Bounds: at most ``hold`` connections claimed at once, of one tenant
    at most :data:`TENANT_BACKLOG` times its connection limit (claims skip a tenant that has that
    many; after an outage the earliest due are mostly one tenant's, and the others' budgets must
    not idle meanwhile), and at most ``sync_concurrency`` worked at once. A claim is made when
    a quarter of a claim's room is free (:data:`REFILL_FRACTION`), never one per release.

    :func:`run_due` makes one for a call and drains it; the scheduler keeps one for as long as
    it runs, so work claimed by one tick goes on through the next, which claims into the room
    it leaves (see :meth:`fill`).
    """

    def __init__(
        self,
        ctx: SyncContext,
        *,
        limiter: TenantLimiter,
        stop: asyncio.Event | None,
        pull: PullOptions,
    ) -> None:
        self._ctx = ctx
        self._limiter = limiter
        self._stop = stop
        self._pull = pull
        settings = ctx.settings
        self.hold = max(settings.sync_concurrency, settings.claim_batch_size)
        self._refill = max(1, min(self.hold, settings.claim_batch_size) // REFILL_FRACTION)
        self._concurrency = asyncio.Semaphore(settings.sync_concurrency)
        self.leases = _Leases(ctx, [])
        self._keeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._held: Counter[str] = Counter()
        self._gates: dict[str, TenantGate] = {}
        self._tenants: dict[str, Tenant | None] = {}
        self._freed = asyncio.Event()

    @property
    def room(self) -> int:
        """How many more connections may be claimed now."""
        return self.hold - len(self._tasks)

    @property
    def busy(self) -> bool:
        """Whether any claimed connection is still being worked."""
        return bool(self._tasks)

    def full_tenants(self) -> list[str]:
        """Tenants that already have their backlog claimed (the next claim skips them)."""
        return sorted(
            tenant_id
            for tenant_id, held in self._held.items()
            if held >= TENANT_BACKLOG * self._gates[tenant_id].limits.max_connections
        )

    async def fill(
        self,
        report: WorkReport,
        *,
        budget: int | None = None,
        until: float | None = None,
        tenant_id: str | None = None,
        connection_ids: Sequence[str] | None = None,
    ) -> bool:
        """Claim due connections into the room as it frees, and start working them.

        Returns False once nothing more is due (what was claimed may still be running), True
        when it stopped with due work possibly left: ``budget`` connections claimed, the
        monotonic clock past ``until``, or ``stop`` set. Never waits for claimed work to end,
        only for room: a caller that returns meanwhile leaves the work running.
        """
        while budget is None or budget > 0:
            if self._stop is not None and self._stop.is_set():
                return True
            if self.busy and self.room < self._refill:
                if not await self._wait_for_room(until):
                    return True
                continue
            skipped = self.full_tenants()
            limit = min(self.room, self._ctx.settings.claim_batch_size)
            asked = limit if budget is None else min(limit, budget)
            batch = await claim(
                self._ctx,
                asked,
                tenant_id=tenant_id,
                connection_ids=connection_ids,
                exclude_tenants=skipped,
            )
            if batch:
                if budget is not None:
                    budget -= len(batch)
                report.claimed += len(batch)
                await self.start(batch, report)
                if len(batch) < asked and not skipped:
                    # Fewer were due than asked for, of every tenant: nothing more is now, and
                    # a claim to find that out would be a transaction for nothing.
                    return False
            elif skipped and self.busy:
                # Only a full tenant's connections may be due: claim again when one is released.
                if not await self._wait_for_room(until):
                    return True
            else:
                return False
        return True

    async def _wait_for_room(self, until: float | None) -> bool:
        """Wait until some claimed connection has been released; False if ``until`` came first."""
        self._freed.clear()
        if until is None:
            await self._freed.wait()
            return True
        try:
            async with asyncio.timeout(max(until - time.monotonic(), 0.0)):
                await self._freed.wait()
        except TimeoutError:
            return False
        return True

    async def start(self, batch: Sequence[DueConnection], report: WorkReport) -> None:
        """Start working each claimed connection in a task of its own; ``report`` counts it."""
        await self._know_tenants({connection.tenant_id for connection in batch})
        self.leases.pending.update(connection.id for connection in batch)
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.create_task(self.leases.keep_alive())
        for connection in batch:
            tenant = self._tenants.get(connection.tenant_id)
            gate = self._gates[connection.tenant_id]
            self._held[connection.tenant_id] += 1
            task = asyncio.create_task(
                self._run(
                    connection,
                    gate,
                    # A tenant deleted meanwhile: its id, which is as bounded as its name.
                    tenant.name if tenant is not None else connection.tenant_id,
                    report,
                )
            )
            self._tasks.add(task)

    def cancel(self) -> None:
        """Cancel every started connection's task (each still releases its lease)."""
        for task in self._tasks:
            task.cancel()

    async def drain(self) -> None:
        """Wait for every started connection to be worked and released; stop renewing."""
        try:
            while self._tasks:
                await asyncio.wait(set(self._tasks))
        finally:
            if not self._tasks and self._keeper is not None:
                self._keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._keeper
                self._keeper = None

    async def _know_tenants(self, tenant_ids: set[str]) -> None:
        """Read the tenants not seen yet: limits default per vendor, metrics use the name."""
        unknown = sorted(tenant_ids - self._tenants.keys())
        if unknown:
            async with self._ctx.sessionmaker() as session:
                for tenant_id in unknown:
                    self._tenants[tenant_id] = await repo.get_tenant(session, tenant_id)
        for tenant_id in unknown:
            tenant = self._tenants[tenant_id]
            vendor = tenant.vendor if tenant is not None else "generic"
            self._gates[tenant_id] = self._limiter.gate(tenant_id, vendor)

    async def _run(
        self, connection: DueConnection, gate: TenantGate, tenant: str, report: WorkReport
    ) -> None:
        try:
            await _work_leased(
                self._ctx,
                connection,
                report,
                gate=gate,
                concurrency=self._concurrency,
                leases=self.leases,
                stop=self._stop,
                pull=self._pull,
                tenant=tenant,
            )
        finally:
            self._held[connection.tenant_id] -= 1
            if not self._held[connection.tenant_id]:
                del self._held[connection.tenant_id]
            task = asyncio.current_task()
            if task is not None:
                self._tasks.discard(task)
            self._freed.set()


async def run_due(
    ctx: SyncContext,
    *,
    tenant_id: str | None = None,
    connection_ids: Sequence[str] | None = None,
    max_batches: int = DEFAULT_MAX_BATCHES,
    stop: asyncio.Event | None = None,
    limiter: TenantLimiter | None = None,
    pull: PullOptions = PullOptions(),
) -> WorkReport:
    """Claim and work due connections until none is left, the budget is spent or ``stop`` is set.

    The budget is ``max_batches`` times ``claim_batch_size`` connections, so a call always ends.
    Claims refill the room released connections leave (see :class:`Workload`); the call returns
    once everything it claimed has been worked and released. ``limiter`` holds the per-tenant
    limits across calls (the scheduler keeps one per process); without one, this call gets its
    own with the vendor defaults.
    """
    report = WorkReport()
    work = Workload(ctx, limiter=limiter or TenantLimiter(), stop=stop, pull=pull)
    try:
        await work.fill(
            report,
            budget=max_batches * ctx.settings.claim_batch_size,
            tenant_id=tenant_id,
            connection_ids=connection_ids,
        )
    except BaseException:
        # A failed claim or a cancelled call: what was started still ends and releases.
        work.cancel()
        raise
    finally:
        await work.drain()
    return report
