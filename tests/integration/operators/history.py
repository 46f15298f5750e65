"""Building a tenant with history for the operator tests: a real launch and sync, then rows.

The launch and the first sync go through the real pages, the sandbox and the runner; older history
(events, sync runs, status changes) is written straight to the database, as the runner would
have written it at those times.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import aiohttp
from sqlalchemy import select, update

from syncsvc.db import event_repo, repo, resource_repo
from syncsvc.db.models import Connection, Tenant, new_id
from syncsvc.keys import SESSIONMAKER
from syncsvc.sandbox.patient import ScriptedPatient
from syncsvc.sandbox.server import RunningSandbox
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.operators.conftest import sync_now
from tests.integration.web.conftest import RunningService
from tests.integration.web.flows import new_link, register

TENANT = "generic"


async def connected_tenant(
    service: RunningService,
    api: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    usernames: tuple[str, ...] = ("nancysmart",),
) -> tuple[Tenant, list[Connection]]:
    """The generic sandbox tenant with one connected, synced patient per username."""
    tenant = await register(service, http, sandbox, GENERIC_TENANT, name=TENANT)
    for index, username in enumerate(usernames):
        link = await new_link(api, f"user-{index}", tenant=TENANT)
        async with ScriptedPatient(username=username) as patient:
            page = await patient.connect(link)
            assert page.status == 200, page.body
    report = await sync_now(service)
    assert report.sync["ok"] == len(usernames), report.to_json()
    async with service.app[SESSIONMAKER]() as session:
        connections = list(await session.scalars(select(Connection).order_by(Connection.user_id)))
    return tenant, connections


async def add_events(
    service: RunningService, tenant: Tenant, at: dt.datetime, *events: dict[str, Any]
) -> None:
    """Record events as the runner would (``kind``/``outcome`` default to a failed sync)."""
    async with service.app[SESSIONMAKER].begin() as session:
        for fields in events:
            await event_repo.add_event(
                session,
                tenant_id=tenant.id,
                at=at,
                **{"kind": "sync", "outcome": "transient", **fields},
            )


async def add_run(
    service: RunningService, connection_id: str, started_at: dt.datetime, outcome: str
) -> None:
    """A finished sync run of ``connection_id`` that started at ``started_at``."""
    async with service.app[SESSIONMAKER].begin() as session:
        run_id = new_id()
        await resource_repo.start_run(
            session,
            run_id=run_id,
            connection_id=connection_id,
            owner="test",
            full=False,
            now=started_at,
        )
        await resource_repo.finish_run(
            session, run_id, finished_at=started_at, outcome=outcome, error_class="throttled"
        )


async def set_status(service: RunningService, connection_id: str, status: str) -> None:
    """Move a connection to ``status`` (as refresh or pull would)."""
    async with service.app[SESSIONMAKER].begin() as session:
        await repo.set_connection_status(
            session, connection_id, status=status, now=dt.datetime.now(dt.UTC), reason=status
        )


async def set_columns(service: RunningService, connection_id: str, **values: Any) -> None:
    """Overwrite columns of a connection (its timestamps, say)."""
    async with service.app[SESSIONMAKER].begin() as session:
        await session.execute(
            update(Connection).where(Connection.id == connection_id).values(**values)
        )


async def set_tenant(service: RunningService, tenant: Tenant, **values: Any) -> None:
    """Overwrite columns of a tenant (its discovery state, say)."""
    async with service.app[SESSIONMAKER].begin() as session:
        await repo.update_tenant(session, tenant.id, now=dt.datetime.now(dt.UTC), **values)
