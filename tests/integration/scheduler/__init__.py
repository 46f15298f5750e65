"""The scheduler and runner against the sandbox: claiming, leases, limits, events, shutdown.

Several :class:`~syncsvc.sync.context.SyncContext` objects with their own lease owners on one
database stand in for several processes (the multi-process tests use real ones). Each context
has its own outbound client made by ``create_http_client``, so per-tenant rate budgets apply
exactly as in production.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

import aiohttp
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db.models.activity import Event
from syncsvc.db.models.connections import Connection, Tenant
from syncsvc.db.models.records import SyncRun
from syncsvc.http import create_http_client
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.settings import Settings
from syncsvc.sync.context import SyncContext
from syncsvc.sync.pipeline.writer import group_writers
from syncsvc.vault import Vault
from tests.integration.connected import connect_patient, register_sandbox_tenant

Sessionmaker = async_sessionmaker[AsyncSession]
NANCY = "12724066"
#: Types the scheduler tests pull: few requests per connection, so tests stay quick.
TYPES = ("Patient", "Condition", "Observation")
#: Bound on any wait in these tests; reaching it is a failure, never a pass.
WAIT_SECONDS = 30.0


@asynccontextmanager
async def contexts(
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    count: int,
    *,
    trace_configs: Sequence[aiohttp.TraceConfig] = (),
) -> AsyncIterator[list[SyncContext]]:
    """``count`` sync contexts (distinct lease owners, own gated clients) on one database.

    ``trace_configs`` watch each client's requests once they have passed the tenant's gate.
    """
    async with AsyncExitStack() as stack:
        # One set of writers, as the contexts of one process share them.
        writers = await stack.enter_async_context(
            group_writers(sessionmaker, lanes=settings.write_lanes)
        )
        made = []
        for index in range(count):
            http = await stack.enter_async_context(
                create_http_client(total_seconds=20, trace_configs=trace_configs)
            )
            made.append(
                SyncContext(
                    settings,
                    sessionmaker,
                    vault,
                    http,
                    owner=f"owner-{index}",
                    group_writers=writers,
                )
            )
        yield made


async def connect_many(
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    sandbox_tenant: str,
    count: int,
    *,
    name: str | None = None,
    types: tuple[str, ...] = TYPES,
) -> tuple[Tenant, list[str]]:
    """A registered tenant and ``count`` connections to Nancy (one user each), due now."""
    tenant = await register_sandbox_tenant(
        sessionmaker, vault, http, sandbox, sandbox_tenant, name=name, resource_types=types
    )
    ids = []
    for index in range(count):
        connection = await connect_patient(
            sessionmaker,
            vault,
            http,
            sandbox,
            tenant,
            sandbox_tenant=sandbox_tenant,
            user_id=f"user-{sandbox_tenant[:8]}-{index}",
        )
        ids.append(connection.id)
    return tenant, ids


async def connections(sessionmaker: Sessionmaker) -> dict[str, Connection]:
    """Every connection by id, read fresh."""
    async with sessionmaker() as session:
        rows = await session.scalars(select(Connection))
        return {row.id: row for row in rows}


async def runs(sessionmaker: Sessionmaker) -> list[SyncRun]:
    """Every sync run, oldest first."""
    async with sessionmaker() as session:
        rows = await session.scalars(select(SyncRun).order_by(SyncRun.started_at))
        return list(rows)


async def events(sessionmaker: Sessionmaker) -> list[Event]:
    """Every recorded event, in order."""
    async with sessionmaker() as session:
        return list(await session.scalars(select(Event).order_by(Event.id)))


def overlapping(rows: list[SyncRun]) -> list[tuple[str, str]]:
    """Pairs of run ids of one connection whose [started, finished] intervals overlap."""
    found = []
    by_connection: dict[str, list[SyncRun]] = {}
    for row in rows:
        by_connection.setdefault(row.connection_id, []).append(row)
    for items in by_connection.values():
        items.sort(key=lambda r: r.started_at)
        for earlier, later in itertools.pairwise(items):
            end = earlier.finished_at or dt.datetime.max.replace(tzinfo=dt.UTC)
            if later.started_at < end:
                found.append((earlier.id, later.id))
    return found


async def wait_until(
    condition: Callable[[], Awaitable[bool]], *, within: float = WAIT_SECONDS
) -> None:
    """Poll ``condition`` until it holds; TimeoutError after ``within`` seconds."""
    async with asyncio.timeout(within):
        # The condition is database state written by other processes: nothing to await but time.
        while not await condition():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
