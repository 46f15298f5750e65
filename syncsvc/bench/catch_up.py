"""Catch-up after an outage: the whole fleet due at once, worked under the per-tenant limits;
and the same with the limits lifted, to see how many connections one process holds in flight.

Both clocks of a fleet (see :mod:`syncsvc.bench.fleet_day`) move on by the outage; every sync is
then overdue and every access token expired. The runner works them with syncsvc's default limits
for each tenant (connections at once, a request budget with a burst), and the time to bring every
connection current is set against the budget's theoretical minimum: the burst at once, the rest
at the budget's rate, the slowest tenant deciding (tenants are paced apart).

:func:`in_flight` makes the fleet due the same way at a given EHR latency, lifts the tenant
limits and lets ``sync_concurrency`` alone bound the work: what it reports (connections and
requests in flight at their peak, RSS, CPU per sync and the share of a core used) says whether
CPU, memory or a cap of syncsvc's stops one process first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.bench.ingest import BenchError, unlimited
from syncsvc.bench.measure import LoggedRequests, peak_rss_mib, reset_peak_rss, rss_mib
from syncsvc.db import repo
from syncsvc.db.models.connections import Connection
from syncsvc.sync.context import SyncContext
from syncsvc.sync.limits import TenantLimiter
from syncsvc.sync.runner import run_due


class Fleet(Protocol):
    """What the catch-up needs of a fleet: its context, tenants and the two clocks."""

    ctx: SyncContext
    sessionmaker: async_sessionmaker[AsyncSession]
    #: The sandbox tenant of each registered tenant id.
    tenant_names: dict[str, str]

    async def advance(self, seconds: float) -> None:
        """Move syncsvc's and the sandbox's clocks on by ``seconds``."""

    async def count_requests(self) -> int:
        """Requests the sandbox logged for the fleet since the last call."""

    async def read_log(self) -> LoggedRequests:
        """The fleet's requests the sandbox logged since the last call, and the most at once."""

    async def set_latency(self, latency_ms: int) -> None:
        """Add ``latency_ms`` to every FHIR and token answer of the fleet's tenants."""


#: How long the EHR was down before the catch-up: every sync is overdue, every token expired.
OUTAGE_SECONDS = 6 * 3600
#: The issue's target: all current within the rate budget's minimum plus this share.
CATCH_UP_SLACK = 0.2
#: EHR latencies the in-flight passes run at, and the issue's memory target for a worker
#: holding 1,000 connections in flight.
IN_FLIGHT_LATENCIES_MS = (300, 1_000)
IN_FLIGHT_RSS_TARGET_MIB = 300.0
#: How often connections in flight and RSS are sampled during an in-flight pass.
SAMPLE_SECONDS = 0.02


@dataclass
class TenantCatchUp:
    """One tenant's part of the catch-up."""

    name: str
    connections: int
    requests: int
    rate: float
    burst: int
    max_connections: int
    peak_connections: int

    @property
    def minimum_seconds(self) -> float:
        """The rate budget's theoretical minimum: the burst at once, the rest at the rate."""
        return max(self.requests - self.burst, 0) / self.rate


@dataclass
class CatchUpFigures:
    """The whole fleet due at once after an outage, worked under the per-tenant limits."""

    seconds: float = 0.0
    tenants: list[TenantCatchUp] = field(default_factory=list)
    syncs: Counter[str] = field(default_factory=Counter)
    refreshes: Counter[str] = field(default_factory=Counter)
    peak_in_flight: int = 0
    peak_rss_service_mib: float = 0.0
    #: Requests the sandbox logged for the fleet's tenants during the catch-up.
    requests_sandbox: int = 0

    @property
    def minimum_seconds(self) -> float:
        """Tenants are paced apart: the slowest one's minimum."""
        return max((t.minimum_seconds for t in self.tenants), default=0.0)

    @property
    def ratio(self) -> float:
        """Measured time over the minimum."""
        return self.seconds / self.minimum_seconds if self.minimum_seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        """The figures as JSON."""
        return {
            "outage_seconds": OUTAGE_SECONDS,
            "seconds": round(self.seconds, 2),
            "minimum_seconds": round(self.minimum_seconds, 2),
            "ratio": round(self.ratio, 3),
            "requests_sandbox": self.requests_sandbox,
            "tenants": [dataclasses.asdict(t) for t in self.tenants],
            "syncs": dict(self.syncs),
            "refreshes": dict(self.refreshes),
            "peak_requests_in_flight": self.peak_in_flight,
            "peak_rss_service_mib": round(self.peak_rss_service_mib, 1),
        }

    def lines(self) -> list[str]:
        """The figures for a terminal."""
        verdict = (
            f"{self.ratio:.2f}x; target <= {1 + CATCH_UP_SLACK:.1f}x: "
            + ("met" if self.ratio <= 1 + CATCH_UP_SLACK else "MISSED")
            if self.minimum_seconds
            else "n/a: every request fitted in the bursts"
        )
        lines = [
            f"catch-up after a {OUTAGE_SECONDS // 3600} h outage (the whole fleet due at once, "
            "under syncsvc's default limits for each tenant): all current in "
            f"{self.seconds:,.1f} s; the rate budget's minimum {self.minimum_seconds:,.1f} s "
            f"({verdict})",
            f"  work: syncs {dict(self.syncs)}, refreshes {dict(self.refreshes)}; peak requests "
            f"in flight {self.peak_in_flight}; peak RSS of the service "
            f"{self.peak_rss_service_mib:.0f} MiB",
        ]
        lines.extend(
            f"  {t.name}: {t.connections:,} connections, {t.requests:,} requests at "
            f"{t.rate:g}/s (burst {t.burst}): minimum {t.minimum_seconds:,.1f} s; connections "
            f"at once {t.peak_connections} (limit {t.max_connections})"
            for t in self.tenants
        )
        return lines


async def catch_up(day: Fleet) -> CatchUpFigures:
    """Both clocks on by an outage, then everything due worked under the tenant limits."""
    figures = CatchUpFigures()
    # Longer when the sync interval is (a fleet of few syncs a day): every sync overdue.
    await day.advance(max(OUTAGE_SECONDS, day.ctx.settings.sync_interval_seconds) + 1)
    await day.count_requests()
    limiter = TenantLimiter()
    reset_peak_rss()
    started = time.perf_counter()
    report = await run_due(day.ctx, limiter=limiter, max_batches=1_000_000)
    figures.seconds = time.perf_counter() - started
    logged = await day.read_log()
    figures.requests_sandbox = logged.count
    figures.peak_in_flight = logged.peak_in_flight
    figures.peak_rss_service_mib = peak_rss_mib()
    figures.syncs, figures.refreshes = report.sync, report.refresh
    async with day.sessionmaker() as session:
        rows = await session.execute(
            select(Connection.tenant_id, func.count())
            .where(Connection.tenant_id.in_(list(day.tenant_names)))
            .group_by(Connection.tenant_id)
        )
        counts = {tenant_id: int(n) for tenant_id, n in rows.all()}
        vendors = {tenant_id: (await repo.get_tenant(session, tenant_id)) for tenant_id in counts}
    for tenant_id, count in counts.items():
        tenant = vendors[tenant_id]
        gate = limiter.gate(tenant_id, tenant.vendor if tenant is not None else "generic")
        figures.tenants.append(
            TenantCatchUp(
                name=day.tenant_names[tenant_id],
                connections=count,
                requests=gate.bucket.taken,
                rate=gate.limits.requests_per_second,
                burst=gate.limits.burst,
                max_connections=gate.limits.max_connections,
                peak_connections=gate.peak,
            )
        )
    if report.failures or set(report.sync) - {"ok"}:
        raise BenchError(f"the catch-up did not succeed: {report.to_json()}")
    return figures


@dataclass
class InFlightFigures:
    """One pass of the whole fleet due at once with the tenant limits lifted."""

    latency_ms: int
    connections: int
    concurrency: int
    seconds: float = 0.0
    peak_connections: int = 0
    peak_requests: int = 0
    rss_before_mib: float = 0.0
    peak_rss_mib: float = 0.0
    #: CPU seconds of the service process (event loop and its threads) during the pass.
    cpu_seconds: float = 0.0
    syncs: Counter[str] = field(default_factory=Counter)
    #: Connections whose work failed outright (a database pool timeout under a saturated CPU,
    #: say): a figure here, not an abort, since where a process gives out is what is measured.
    failures: int = 0

    @property
    def cores_used(self) -> float:
        """CPU seconds over wall seconds: 1.0 is one core kept busy."""
        return self.cpu_seconds / self.seconds if self.seconds else 0.0

    @property
    def rss_per_connection_kib(self) -> float:
        """RSS growth over the peak of connections in flight."""
        grown = max(self.peak_rss_mib - self.rss_before_mib, 0.0) * 1024
        return grown / self.peak_connections if self.peak_connections else 0.0

    def to_json(self) -> dict[str, Any]:
        """The figures as JSON."""
        return {
            "latency_ms": self.latency_ms,
            "connections": self.connections,
            "sync_concurrency": self.concurrency,
            "seconds": round(self.seconds, 2),
            "peak_connections_in_flight": self.peak_connections,
            "peak_requests_in_flight": self.peak_requests,
            "rss_before_mib": round(self.rss_before_mib, 1),
            "peak_rss_mib": round(self.peak_rss_mib, 1),
            "rss_per_connection_kib": round(self.rss_per_connection_kib, 1),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "cores_used": round(self.cores_used, 3),
            "syncs": dict(self.syncs),
            "failures": self.failures,
        }

    def line(self) -> str:
        """The pass for a terminal."""
        syncs = self.syncs.total()
        held = (
            f"; target with 1,000 in flight < {IN_FLIGHT_RSS_TARGET_MIB:.0f} MiB: "
            + ("met" if self.peak_rss_mib < IN_FLIGHT_RSS_TARGET_MIB else "MISSED")
            if self.peak_connections >= 1_000
            else ""
        )
        return (
            f"in flight at {self.latency_ms:,} ms (tenant limits lifted, sync_concurrency "
            f"{self.concurrency:,}): {syncs:,} syncs in {self.seconds:,.1f} s; peak "
            f"{self.peak_connections:,} connections and {self.peak_requests:,} requests in "
            f"flight; RSS {self.rss_before_mib:.0f} MiB before, {self.peak_rss_mib:.0f} MiB at "
            f"peak ({self.rss_per_connection_kib:.0f} KiB per connection in flight){held}; CPU "
            f"{self.cpu_seconds:.2f} s ({1000 * self.cpu_seconds / max(syncs, 1):.1f} ms per "
            f"sync, {self.cores_used:.2f} of a core)"
            + (f"; {self.failures:,} connection(s) FAILED" if self.failures else "")
        )


async def in_flight(day: Fleet, latency_ms: int, concurrency: int) -> InFlightFigures:
    """The whole fleet due at once at ``latency_ms``, limits lifted, ``concurrency`` at most."""
    settings = day.ctx.settings.replace(
        sync_concurrency=concurrency, claim_batch_size=min(concurrency, 1_000)
    )
    ctx = dataclasses.replace(day.ctx, settings=settings)
    await day.set_latency(latency_ms)
    # Past every connection's next sync, whatever the interval: the whole fleet is due.
    await day.advance(max(OUTAGE_SECONDS, settings.sync_interval_seconds) + 1)
    await day.count_requests()
    limiter = unlimited()
    figures = InFlightFigures(latency_ms=latency_ms, connections=0, concurrency=concurrency)
    reset_peak_rss()
    figures.rss_before_mib = rss_mib()

    async def sample() -> None:
        # Bounded by the pass: cancelled when run_due returns.
        while True:
            figures.peak_connections = max(figures.peak_connections, limiter.working())
            await asyncio.sleep(SAMPLE_SECONDS)

    sampler = asyncio.create_task(sample())
    started, cpu = time.perf_counter(), time.process_time()
    try:
        report = await run_due(ctx, limiter=limiter, max_batches=1_000_000)
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    figures.cpu_seconds = time.process_time() - cpu
    figures.seconds = time.perf_counter() - started
    figures.peak_requests = (await day.read_log()).peak_in_flight
    figures.peak_rss_mib = peak_rss_mib()
    figures.connections = report.claimed
    figures.syncs = report.sync
    figures.failures = report.failures
    await day.set_latency(0)
    return figures
