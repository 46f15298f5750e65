"""The whole-record figures: first syncs of every US Core type, by searches and by $everything.

The same sandbox patients (every US Core type, a few hundred Observations each) are connected
afresh and pulled in full, once with one search per type and once through
``Patient/{id}/$everything`` (the tenant's ``"*": {"everything": true}`` override), at no added
latency and at the ``wide`` scenario's latency per request. The figures say whether the
operation is worth turning on; nothing turns it on by default.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.bench import ingest, world
from syncsvc.bench.measure import Sample
from syncsvc.bench.report import Row
from syncsvc.db import repo
from syncsvc.sandbox.config import SandboxConfig
from syncsvc.smart.scopes import DEFAULT_RESOURCE_TYPES
from syncsvc.sync.context import SyncContext
from syncsvc.vault import Vault


@dataclass
class Place:
    """What the scenario uses of the benchmark run (it records what it creates there)."""

    origin: str
    config: SandboxConfig
    http: aiohttp.ClientSession
    sessionmaker: async_sessionmaker[AsyncSession]
    vault: Vault
    context: Callable[..., SyncContext]
    say: Callable[[str], None]
    created: list[str]
    tenant_ids: list[str]


PLANS: dict[str, dict[str, Any] | None] = {
    "searches": None,
    "$everything": {"*": {"everything": True}},
}


async def _expected(suite: Place, patients: list[str]) -> int:
    """Resources a first sync of ``patients`` handles (generating them now, untimed)."""
    total = 0
    for patient in patients:
        for resource_type in DEFAULT_RESOURCE_TYPES:
            url = (
                f"{suite.origin}/admin/tenants/{world.WHOLE_TENANT}/patients/{patient}/"
                f"{resource_type}"
            )
            async with suite.http.get(url) as response:
                listed = orjson.loads(await response.read())
            total += len(listed) if isinstance(listed, list) else 0
    return total


async def measure(suite: Place, rounds: int, latency_ms: int) -> list[Row]:
    """The rows of the whole-record scenario (``rounds`` samples each)."""
    base = world.urls(suite.origin, suite.config, world.WHOLE_TENANT).fhir_base
    tenant = await world.register(
        suite.sessionmaker,
        suite.vault,
        suite.http,
        base,
        name=f"bench-whole-{secrets.token_hex(3)}",
        resource_types=DEFAULT_RESOURCE_TYPES,
    )
    suite.tenant_ids.append(tenant.id)
    connector = world.Connector(
        suite.sessionmaker,
        suite.vault,
        suite.http,
        tenant,
        world.urls(suite.origin, suite.config, world.WHOLE_TENANT).authorize,
    )
    patients = [world.patient_id(i) for i in range(world.WHOLE_PATIENTS)]
    expect = await _expected(suite, patients)
    ctx = suite.context(sync_concurrency=len(patients))
    samples: dict[str, list[Sample]] = {}
    for number in range(1, rounds + 1):
        for latency in (0, latency_ms):
            await ingest.set_latency(suite.http, suite.origin, world.WHOLE_TENANT, latency)
            for plan, overrides in PLANS.items():
                async with suite.sessionmaker.begin() as session:
                    await repo.update_tenant(
                        session, tenant.id, now=dt.datetime.now(dt.UTC), plan_overrides=overrides
                    )
                ids = await connector.connect_many(
                    patients,
                    user_prefix=f"whole{number}-{secrets.token_hex(4)}",
                    next_refresh_at=None,
                    next_sync_at=None,
                )
                suite.created.extend(ids)
                try:
                    sample = await ingest.sync_round(
                        ctx, ingest.Fleet(ids, patients), expect=expect
                    )
                finally:
                    await world.drop_connections(suite.sessionmaker, ids)
                name = f"first sync, {plan}, {latency} ms"
                samples.setdefault(name, []).append(sample)
                suite.say(f"round {number}: whole record, {name}: {sample.rate:,.0f}/s")
    await ingest.set_latency(suite.http, suite.origin, world.WHOLE_TENANT, 0)
    return [
        Row.from_samples("whole", name, taken, unit="resources/s")
        for name, taken in samples.items()
    ]
