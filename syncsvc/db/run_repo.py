"""Sync bookkeeping: each resource type's sync state, the runs, a connection's last sync stamps.

Each function takes an ``AsyncSession``; none commits.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import bindparam, exists, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.vocabulary import SYNCING_STATUSES

from .base import rowcount
from .models.connections import Connection
from .models.records import SyncRun, SyncState
from .prebuilt import UpdateBy, UpsertBy, table_of

# --- sync states -----------------------------------------------------------------------------


_STATES = select(SyncState).where(SyncState.connection_id == bindparam("connection_id"))


async def sync_states(session: AsyncSession, connection_id: str) -> dict[str, SyncState]:
    """The sync state of each resource type of a connection."""
    rows = await session.scalars(_STATES, {"connection_id": connection_id})
    return {row.resource_type: row for row in rows}


_STATE_UPDATE = UpdateBy(SyncState, "connection_id", "resource_type")
_STATE_UPSERT = UpsertBy(SyncState, "connection_id", "resource_type")
#: The counts of a state row created by a save that does not name them.
_NEW_STATE_COUNTS = {
    "new_count": 0,
    "changed_count": 0,
    "unchanged_count": 0,
    "deleted_count": 0,
    "rejected_count": 0,
}

_RUN_UPDATE = UpdateBy(SyncRun, "id")
_RUNS = table_of(SyncRun)
_CONNECTIONS = table_of(Connection)
_RUN_VALUES = (
    "id",
    "connection_id",
    "owner",
    "full",
    "started_at",
    "outcome",
    "new_count",
    "changed_count",
    "unchanged_count",
    "deleted_count",
    "rejected_count",
    "type_results",
    "bytes_received",
    "requests",
    "retries",
)
#: The run row, inserted only while its connection is syncing: the statement reads the status
#: itself, so a caller that read the connection a moment before learns of a disconnect
#: meanwhile without reading it again.
_RUN_INSERT = insert(_RUNS).from_select(
    list(_RUN_VALUES),
    select(*(bindparam(name, type_=_RUNS.c[name].type) for name in _RUN_VALUES)).where(
        exists().where(
            _CONNECTIONS.c.id == bindparam("connection_id"),
            _CONNECTIONS.c.status.in_(sorted(SYNCING_STATUSES)),
        )
    ),
)


async def save_sync_state(
    session: AsyncSession,
    connection_id: str,
    resource_type: str,
    *,
    now: dt.datetime,
    **fields: Any,
) -> None:
    """Create or update the sync state of one type with ``fields``.

    One upsert when ``fields`` name a status: a first sync saves each of its types this way,
    and an update that found no row followed by an insert cost two statements a type. Without
    a status it updates the existing row only.
    """
    values = {"updated_at": now, **fields}
    if "status" not in fields:
        # A change of some columns of a row that exists (withdrawn parts noted at a refresh):
        # an insert without a status breaks its NOT NULL before the conflict is seen.
        await _STATE_UPDATE.execute(
            session, {"connection_id": connection_id, "resource_type": resource_type}, values
        )
        return
    await _STATE_UPSERT.execute(
        session,
        {"connection_id": connection_id, "resource_type": resource_type},
        values,
        defaults=_NEW_STATE_COUNTS,
    )


class StateBatch:
    """Sync-state saves naming a status, held to be written together by :meth:`write`.

    A run that ends several types writes their states in one statement per set of columns
    instead of one each.
    """

    def __init__(self) -> None:
        self._rows: list[tuple[dict[str, str], dict[str, Any]]] = []

    def add(
        self, connection_id: str, resource_type: str, *, now: dt.datetime, **fields: Any
    ) -> None:
        """Hold what :func:`save_sync_state` would write (``fields`` must name a status)."""
        if "status" not in fields:
            raise ValueError("a held sync-state save names a status")
        keys = {"connection_id": connection_id, "resource_type": resource_type}
        self._rows.append((keys, {"updated_at": now, **fields}))

    async def write(self, session: AsyncSession) -> None:
        """Write what was held, then hold nothing."""
        rows, self._rows = self._rows, []
        if rows:
            await _STATE_UPSERT.execute_many(session, rows, defaults=_NEW_STATE_COUNTS)


# --- runs ------------------------------------------------------------------------------------


async def start_run(
    session: AsyncSession,
    *,
    run_id: str,
    connection_id: str,
    owner: str | None,
    full: bool,
    now: dt.datetime,
) -> bool:
    """Record that a run started (it reads ``running`` until :func:`finish_run`); False (and
    nothing recorded) when the connection is not syncing."""
    result = await session.execute(
        _RUN_INSERT,
        {
            "id": run_id,
            "connection_id": connection_id,
            "owner": owner,
            "full": full,
            "started_at": now,
            "outcome": "running",
            "new_count": 0,
            "changed_count": 0,
            "unchanged_count": 0,
            "deleted_count": 0,
            "rejected_count": 0,
            "type_results": {},
            "bytes_received": 0,
            "requests": 0,
            "retries": 0,
        },
    )
    return rowcount(result) == 1


async def finish_run(session: AsyncSession, run_id: str, **fields: Any) -> None:
    """Record how a run ended."""
    await _RUN_UPDATE.execute(session, {"id": run_id}, fields)


async def get_run(session: AsyncSession, run_id: str) -> SyncRun | None:
    """One run record."""
    return await session.get(SyncRun, run_id)


async def stamp_connection_sync(
    session: AsyncSession, connection_id: str, *, now: dt.datetime, success: bool
) -> None:
    """Set ``last_sync_at`` (and ``last_success_at`` when the run succeeded)."""
    values: dict[str, Any] = {"last_sync_at": now}
    if success:
        values["last_success_at"] = now
    await session.execute(
        update(Connection)
        .where(Connection.id == connection_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
