"""Building a tenant with history for the operator tests: a real launch and sync, then rows.

The launch and the first sync go through the real pages, the sandbox and the runner; older history
(events, sync runs, status changes) is written straight to the database, as the runner would
have written it at those times.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import update

from syncsvc.db import event_repo, repo, run_repo
from syncsvc.db.columns import new_id
from syncsvc.db.models.connections import Connection, Tenant
from syncsvc.web.keys import SERVICES
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.web.flows import Flow, sync_now
from tests.integration.web.service import RunningService

TENANT = "generic"


async def connected_tenant(
    flow: Flow, usernames: tuple[str, ...] = ("nancysmart",)
) -> tuple[Tenant, list[Connection]]:
    """The generic sandbox tenant with one connected, synced patient per username."""
    tenant = await flow.register(GENERIC_TENANT, name=TENANT)
    for index, username in enumerate(usernames):
        await flow.connect(username, tenant=TENANT, user_id=f"user-{index}")
    report = await sync_now(flow.service)
    assert report.sync["ok"] == len(usernames), report.to_json()
    return tenant, await flow.connections()


async def add_events(
    service: RunningService, tenant: Tenant, at: dt.datetime, *events: dict[str, Any]
) -> None:
    """Record events as the runner would (``kind``/``outcome`` default to a failed sync)."""
    async with service.app[SERVICES].sessionmaker.begin() as session:
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
    async with service.app[SERVICES].sessionmaker.begin() as session:
        run_id = new_id()
        await run_repo.start_run(
            session,
            run_id=run_id,
            connection_id=connection_id,
            owner="test",
            full=False,
            now=started_at,
        )
        await run_repo.finish_run(
            session, run_id, finished_at=started_at, outcome=outcome, error_class="throttled"
        )


async def set_columns(service: RunningService, connection_id: str, **values: Any) -> None:
    """Overwrite columns of a connection (its timestamps, say)."""
    async with service.app[SERVICES].sessionmaker.begin() as session:
        await session.execute(
            update(Connection).where(Connection.id == connection_id).values(**values)
        )


async def set_tenant(service: RunningService, tenant: Tenant, **values: Any) -> None:
    """Overwrite columns of a tenant (its discovery state, say)."""
    async with service.app[SERVICES].sessionmaker.begin() as session:
        await repo.update_tenant(session, tenant.id, now=dt.datetime.now(dt.UTC), **values)
