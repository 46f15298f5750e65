"""Ingest and re-sync rounds through syncsvc's real sync engine (claim, refresh, pull, release)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from syncsvc.bench import world
from syncsvc.bench.measure import Sample, timed
from syncsvc.sync.context import SyncContext
from syncsvc.sync.limits import TenantLimiter, TenantLimits
from syncsvc.sync.runner import run_due

#: The sandbox admin API takes changes as JSON only.
JSON = {"Content-Type": "application/json"}
#: Admin API calls in flight while changing resources between rounds.
CHANGE_CONCURRENCY = 16
#: The sandbox is ours: the per-tenant politeness limits (``syncsvc.sync.limits``) are lifted,
#: as an operator would for an EHR they run, so the figures are syncsvc's, not the budget's.
UNLIMITED = TenantLimits(max_connections=1_000, requests_per_second=1e9, burst=1_000_000)


def unlimited() -> TenantLimiter:
    """A limiter that lets every tenant go as fast as syncsvc can."""
    return TenantLimiter(default=UNLIMITED)


class BenchError(Exception):
    """A round did not do what it was meant to (a failed sync, a missing resource)."""


@dataclass
class Fleet:
    """Connections of one scenario and the patients behind them."""

    connection_ids: list[str]
    patients: list[str]


async def sync_round(ctx: SyncContext, fleet: Fleet, *, expect: int | None) -> Sample:
    """Make the fleet due and work it once; the sample counts every resource handled.

    ``expect`` is the count the round must handle (``None``: the caller checks it).
    """
    await world.make_due(ctx.sessionmaker, fleet.connection_ids)
    with timed(ctx.decoder.worker_pids) as sample:
        report = await run_due(ctx, connection_ids=fleet.connection_ids, limiter=unlimited())
    if report.failures or set(report.sync) != {"ok"}:
        raise BenchError(f"a sync round did not succeed: {report.to_json()}")
    handled = sum(report.resources[name] for name in ("new", "changed", "unchanged", "deleted"))
    if expect is not None and handled != expect:
        raise BenchError(f"a sync round handled {handled} resources, expected {expect}")
    sample.items = handled
    return sample


async def change_some(
    http: aiohttp.ClientSession,
    origin: str,
    tenant_id: str,
    patients: Sequence[str],
    *,
    fraction: float,
    rng: random.Random,
) -> int:
    """Give ``fraction`` of each patient's Observations a new version at the sandbox."""
    limit = asyncio.Semaphore(CHANGE_CONCURRENCY)
    base = f"{origin}/admin/tenants/{tenant_id}/patients"

    async def listed(patient: str) -> list[str]:
        async with http.get(f"{base}/{patient}/Observation") as response:
            return [item["id"] for item in orjson.loads(await response.read())]

    async def patch(patient: str, rid: str) -> None:
        body = orjson.dumps({"note": [{"text": f"amended {rng.random():.6f}"}]})
        async with (
            limit,
            http.patch(f"{base}/{patient}/Observation/{rid}", data=body, headers=JSON) as response,
        ):
            await response.read()
            if response.status != 200:
                raise BenchError(f"the sandbox refused a change ({response.status})")

    changes: list[tuple[str, str]] = []
    for patient in patients:
        ids = await listed(patient)
        picked = rng.sample(ids, max(1, round(len(ids) * fraction)))
        changes.extend((patient, rid) for rid in picked)
    await asyncio.gather(*(patch(p, r) for p, r in changes))
    return len(changes)


async def set_latency(
    http: aiohttp.ClientSession,
    origin: str,
    tenant_id: str,
    latency_ms: int,
    *,
    token: bool = False,
) -> None:
    """Add ``latency_ms`` before every FHIR answer of a tenant, and its token answers too when
    ``token`` (0 removes it)."""
    faults: list[dict[str, Any]] = []
    if latency_ms:
        faults.append({"kind": "latency", "latency_ms": latency_ms})
        if token:
            faults.append({"kind": "latency", "latency_ms": latency_ms, "target": "token"})
    url = f"{origin}/admin/tenants/{tenant_id}/faults"
    async with http.put(url, data=orjson.dumps(faults), headers=JSON) as response:
        await response.read()
        if response.status >= 300:
            raise BenchError(f"the sandbox refused the latency fault ({response.status})")


async def warm(
    http: aiohttp.ClientSession, origin: str, tenant_id: str, patients: Sequence[str]
) -> None:
    """Make the sandbox generate the patients' data now, outside any timed block."""
    for patient in patients:
        for resource_type in ("Patient", "Observation"):
            url = f"{origin}/admin/tenants/{tenant_id}/patients/{patient}/{resource_type}"
            async with http.get(url) as response:
                await response.read()
