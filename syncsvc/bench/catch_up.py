"""Catch-up after an outage: the whole fleet due at once, worked under the per-tenant limits.

Both clocks of a fleet (see :mod:`syncsvc.bench.fleet_day`) move on by the outage; every sync is
then overdue and every access token expired. The runner works them with syncsvc's default limits
for each tenant (connections at once, a request budget with a burst), and the time to bring every
connection current is set against the budget's theoretical minimum: the burst at once, the rest
at the budget's rate, the slowest tenant deciding (tenants are paced apart).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.bench.ingest import BenchError
from syncsvc.bench.measure import PeakInFlight, peak_rss_mib, reset_peak_rss
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


#: How long the EHR was down before the catch-up: every sync is overdue, every token expired.
OUTAGE_SECONDS = 6 * 3600
#: The issue's target: all current within the rate budget's minimum plus this share.
CATCH_UP_SLACK = 0.2


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
    await day.advance(OUTAGE_SECONDS)
    await day.count_requests()
    limiter = TenantLimiter()
    reset_peak_rss()
    started = time.perf_counter()
    async with PeakInFlight(day.ctx.http) as in_flight:
        report = await run_due(day.ctx, limiter=limiter, max_batches=1_000_000)
    figures.seconds = time.perf_counter() - started
    figures.requests_sandbox = await day.count_requests()
    figures.peak_in_flight = in_flight.peak
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
