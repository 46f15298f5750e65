"""Which connections are due for refresh or sync, and the lease a worker holds on one meanwhile.

Each function takes an ``AsyncSession`` and never commits. Claims go through
:func:`syncsvc.db.leases.claim_rows`, so concurrent workers never hold the same connection; the
lease makes refresh and sync single-flight across processes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from .base import rowcount
from .leases import claim_columns, lease_free
from .models.connections import ACTIVE_SQL, Connection
from .prebuilt import UpdateBy, table_of

# --- leases ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DueConnection:
    """What a claim returns of a connection: enough to know what is due and whose it is.

    The work reads the connection itself in its own transactions; building whole
    :class:`Connection` objects here was most of a claim's time in the claiming process.
    """

    id: str
    tenant_id: str
    next_refresh_at: dt.datetime | None
    next_sync_at: dt.datetime | None
    next_due_at: dt.datetime | None


_RETURNED = (
    Connection.id,
    Connection.tenant_id,
    Connection.next_refresh_at,
    Connection.next_sync_at,
    Connection.next_due_at,
)


def _due(now: dt.datetime) -> ColumnElement[bool]:
    # ``next_due_at`` already waits out a back-off, and ``status = 'active'`` is written as the
    # claim index's own predicate (a literal, never a parameter: a generic plan of a prepared
    # statement could not use the partial index otherwise). The walk then meets only due rows;
    # those leased at the moment are the only ones it reads and steps over.
    return and_(
        text(f"connections.{ACTIVE_SQL}"),
        Connection.next_due_at <= now,
        lease_free(Connection.lease_until, now),
    )


async def claim_due_connections(
    session: AsyncSession,
    owner: str,
    now: dt.datetime,
    lease_seconds: int,
    limit: int,
    *,
    tenant_id: str | None = None,
    connection_ids: Sequence[str] | None = None,
    exclude_tenants: Sequence[str] = (),
) -> list[DueConnection]:
    """Lease up to ``limit`` due connections to ``owner`` until ``now + lease_seconds``.

    A connection is due when it is active, its refresh or sync time has come, it is not backing
    off and nobody holds an unexpired lease (an expired lease is a crashed worker's, taken over).
    The claim is :func:`syncsvc.db.leases.claim_columns`: safe under concurrent claimers on
    PostgreSQL and SQLite. Commit promptly: the lease is the claim, not the lock.
    ``exclude_tenants`` skips tenants the caller already holds enough of.
    """
    filters: list[ColumnElement[bool]] = []
    if tenant_id is not None:
        filters.append(Connection.tenant_id == tenant_id)
    if connection_ids is not None:
        filters.append(Connection.id.in_(list(connection_ids)))
    if exclude_tenants:
        filters.append(Connection.tenant_id.not_in(list(exclude_tenants)))
    rows = await claim_columns(
        session,
        Connection,
        Connection.id,
        _RETURNED,
        claimable=_due(now),
        filters=filters,
        order_by=(Connection.next_due_at, Connection.id),
        owner=owner,
        now=now,
        lease_seconds=lease_seconds,
        limit=limit,
    )
    return [
        DueConnection(
            id=row.id,
            tenant_id=row.tenant_id,
            next_refresh_at=row.next_refresh_at,
            next_sync_at=row.next_sync_at,
            next_due_at=row.next_due_at,
        )
        for row in rows
    ]


async def due_backlog(session: AsyncSession, now: dt.datetime) -> tuple[int, dt.datetime | None]:
    """How many connections a claim could take now, and since when the longest-waiting is due.

    The same predicate as :func:`claim_due_connections`, so the backlog metric and the claims
    cannot disagree about what is due.
    """
    row = (
        await session.execute(
            select(func.count(), func.min(Connection.next_due_at)).where(_due(now))
        )
    ).one()
    return int(row[0]), row[1]


_CONNECTIONS = table_of(Connection)
#: ``owner`` still holds an unexpired lease on the connection.
#: The lease is still ``owner``'s and unexpired at ``now``.
_HOLDER = and_(
    _CONNECTIONS.c.lease_owner == bindparam("owner"),
    _CONNECTIONS.c.lease_until > bindparam("now", type_=_CONNECTIONS.c.lease_until.type),
)
_HELD = and_(_CONNECTIONS.c.id == bindparam("connection_id"), _HOLDER)
#: Built once: every run renews or releases its connection's lease.
_RENEW = (
    update(_CONNECTIONS)
    .where(_HELD)
    .values(lease_until=bindparam("until", type_=_CONNECTIONS.c.lease_until.type))
)
_RELEASE_HELD = update(_CONNECTIONS).where(_HELD).values(lease_owner=None, lease_until=None)
_RELEASE = (
    update(_CONNECTIONS)
    .where(
        _CONNECTIONS.c.id == bindparam("connection_id"),
        _CONNECTIONS.c.lease_owner == bindparam("owner"),
    )
    .values(lease_owner=None, lease_until=None)
)


async def renew_lease(
    session: AsyncSession,
    connection_id: str,
    owner: str,
    *,
    now: dt.datetime,
    lease_seconds: int,
) -> bool:
    """Extend ``owner``'s lease; False if the lease was lost (expired and taken over)."""
    result = await session.execute(
        _RENEW,
        {
            "connection_id": connection_id,
            "owner": owner,
            "now": now,
            "until": now + dt.timedelta(seconds=lease_seconds),
        },
    )
    return rowcount(result) == 1


async def renew_leases(
    session: AsyncSession,
    connection_ids: Sequence[str],
    owner: str,
    *,
    now: dt.datetime,
    lease_seconds: int,
) -> set[str]:
    """Extend ``owner``'s unexpired leases on ``connection_ids``; the ids *lost* (expired and
    taken over, or gone).

    A row another transaction holds locked right now (this process's own write closing that
    connection's run, say) is skipped, not waited for: its lease is renewed by that write or the
    next round, and waiting could close a cycle of row locks with a transaction that updates
    several connections (PostgreSQL would then abort one as a deadlock).
    """
    if not connection_ids:
        return set()
    ids = list(connection_ids)
    held = and_(
        Connection.id.in_(ids), Connection.lease_owner == owner, Connection.lease_until > now
    )
    lockable = select(Connection.id).where(held)
    if session.get_bind().dialect.name == "postgresql":
        lockable = lockable.with_for_update(skip_locked=True)
    locked = list(await session.scalars(lockable))
    if locked:
        await session.execute(
            update(Connection)
            .where(Connection.id.in_(locked))
            .values(lease_until=now + dt.timedelta(seconds=lease_seconds))
            .execution_options(synchronize_session=False)
        )
    # Read without locking: a row skipped above is still ours unless this says otherwise.
    still_held = set(await session.scalars(select(Connection.id).where(held)))
    return set(ids) - still_held - set(locked)


async def release_lease(session: AsyncSession, connection_id: str, owner: str) -> bool:
    """Give back ``owner``'s lease on a connection; False if ``owner`` no longer held it."""
    result = await session.execute(_RELEASE, {"connection_id": connection_id, "owner": owner})
    return rowcount(result) == 1


#: The release with columns set in the same statement, while the lease is still the owner's.
_RELEASE_SETTING = UpdateBy(Connection, "id", guard=_HOLDER)


async def release_held_lease(
    session: AsyncSession,
    connection_id: str,
    owner: str,
    *,
    now: dt.datetime,
    setting: Mapping[str, Any] | None = None,
) -> bool:
    """Give back ``owner``'s unexpired lease; False if it had expired or was taken over.

    The check :func:`renew_lease` makes, with the lease handed back in the same statement: the
    closing write of a run both proves the connection is still this process's and frees it.
    ``setting``: columns the same statement sets, only if the lease was still held (a run's
    next schedule, which must not overwrite the one of a process that took the connection over).
    """
    if not setting:
        params = {"connection_id": connection_id, "owner": owner, "now": now}
        return rowcount(await session.execute(_RELEASE_HELD, params)) == 1
    values = {"lease_owner": None, "lease_until": None, **setting}
    holder = {"owner": owner, "now": now}
    return await _RELEASE_SETTING.execute(session, {"id": connection_id}, values, holder) == 1
