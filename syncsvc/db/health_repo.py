"""Read queries behind tenant health and metrics: connection facts, error counts, run outcomes.

Everything here reads; nothing commits. Rows come back narrow (the columns health needs, never
tokens or patient identifiers), so a report over many connections stays cheap to load.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from syncsvc.vocabulary import UNSEARCHABLE

from .models.activity import Event
from .models.connections import Connection, Credential
from .models.records import SyncRun, SyncState


@dataclass(frozen=True, slots=True)
class ConnectionFacts:
    """The health-relevant columns of one connection."""

    tenant_id: str
    status: str
    status_reason: str | None
    created_at: dt.datetime
    connected_at: dt.datetime | None
    last_refresh_at: dt.datetime | None
    last_success_at: dt.datetime | None
    next_refresh_at: dt.datetime | None
    requested_scopes: tuple[str, ...]
    granted_scopes: tuple[str, ...]
    has_refresh_token: bool


@dataclass(frozen=True, slots=True)
class ErrorCount:
    """How many events of one error class (and resource type) a tenant had since a moment."""

    tenant_id: str
    error_class: str
    resource_type: str | None
    count: int


async def connection_facts(
    session: AsyncSession, tenant_ids: Sequence[str] | None = None
) -> list[ConnectionFacts]:
    """The health facts of every connection (of ``tenant_ids`` when given)."""
    query = select(
        Connection.tenant_id,
        Connection.status,
        Connection.status_reason,
        Connection.created_at,
        Connection.connected_at,
        Connection.last_refresh_at,
        Connection.last_success_at,
        Connection.next_refresh_at,
        Connection.requested_scopes,
        Connection.granted_scopes,
        Credential.refresh_token_enc.is_not(None).label("has_refresh_token"),
    ).outerjoin(Credential, Credential.connection_id == Connection.id)
    if tenant_ids is not None:
        query = query.where(Connection.tenant_id.in_(tenant_ids))
    rows = await session.execute(query.order_by(Connection.tenant_id, Connection.id))
    return [
        ConnectionFacts(
            tenant_id=row.tenant_id,
            status=row.status,
            status_reason=row.status_reason,
            created_at=row.created_at,
            connected_at=row.connected_at,
            last_refresh_at=row.last_refresh_at,
            last_success_at=row.last_success_at,
            next_refresh_at=row.next_refresh_at,
            requested_scopes=tuple(row.requested_scopes or ()),
            granted_scopes=tuple(row.granted_scopes or ()),
            has_refresh_token=bool(row.has_refresh_token),
        )
        for row in rows
    ]


async def error_counts(
    session: AsyncSession, since: dt.datetime, tenant_ids: Sequence[str] | None = None
) -> list[ErrorCount]:
    """Events with an error class at or after ``since``, summed per tenant, class and type."""
    total = func.sum(Event.count)
    query = (
        select(Event.tenant_id, Event.error_class, Event.resource_type, total)
        .where(Event.at >= since, Event.error_class.is_not(None))
        .group_by(Event.tenant_id, Event.error_class, Event.resource_type)
    )
    if tenant_ids is not None:
        query = query.where(Event.tenant_id.in_(tenant_ids))
    rows = await session.execute(query)
    return [
        ErrorCount(tenant_id, str(error_class), resource_type, int(count or 0))
        for tenant_id, error_class, resource_type, count in rows
    ]


@dataclass(frozen=True, slots=True)
class TypeFailures:
    """How many of a tenant's active connections have one resource type ``failing``."""

    tenant_id: str
    resource_type: str
    connections: int


async def type_failures(
    session: AsyncSession, tenant_ids: Sequence[str] | None = None
) -> list[TypeFailures]:
    """Per tenant and resource type, the active connections where that type is ``failing``."""
    count = func.count()
    query = (
        select(Connection.tenant_id, SyncState.resource_type, count)
        .join(Connection, Connection.id == SyncState.connection_id)
        .where(SyncState.status == "failing", Connection.status == "active")
        .group_by(Connection.tenant_id, SyncState.resource_type)
    )
    if tenant_ids is not None:
        query = query.where(Connection.tenant_id.in_(tenant_ids))
    rows = await session.execute(query)
    return [
        TypeFailures(tenant_id, resource_type, int(n))
        for tenant_id, resource_type, n in sorted(rows, key=lambda row: (row[0], row[1]))
    ]


@dataclass(frozen=True, slots=True)
class TypeStateCount:
    """How many of a tenant's live connections have one type in one state."""

    tenant_id: str
    resource_type: str
    state: str
    count: int


async def type_state_counts(
    session: AsyncSession, tenant_ids: Sequence[str] | None = None
) -> list[TypeStateCount]:
    """Per tenant, type and state: connections (not revoked) with that type in that state."""
    query = (
        select(Connection.tenant_id, SyncState.resource_type, SyncState.status, func.count())
        .join(Connection, Connection.id == SyncState.connection_id)
        .where(Connection.status != "revoked")
        .group_by(Connection.tenant_id, SyncState.resource_type, SyncState.status)
        .order_by(Connection.tenant_id, SyncState.resource_type, SyncState.status)
    )
    if tenant_ids is not None:
        query = query.where(Connection.tenant_id.in_(tenant_ids))
    rows = await session.execute(query)
    return [
        TypeStateCount(str(tenant_id), str(resource_type), str(state), int(count))
        for tenant_id, resource_type, state, count in rows
    ]


@dataclass(frozen=True, slots=True)
class UnsearchablePart:
    """How many of a tenant's live connections have one type ``unsearchable`` for one part."""

    tenant_id: str
    resource_type: str
    #: The granted part as a scope qualifier (``category=<system>|<code>``).
    part: str
    count: int


async def unsearchable_part_counts(
    session: AsyncSession, tenant_ids: Sequence[str] | None = None
) -> list[UnsearchablePart]:
    """Per tenant, ``unsearchable`` type and granted part: connections (not revoked) with it."""
    query = (
        select(Connection.tenant_id, SyncState.resource_type, SyncState.unsearchable_parts)
        .join(Connection, Connection.id == SyncState.connection_id)
        .where(Connection.status != "revoked", SyncState.status == UNSEARCHABLE)
    )
    if tenant_ids is not None:
        query = query.where(Connection.tenant_id.in_(tenant_ids))
    counts: dict[tuple[str, str, str], int] = {}
    for tenant_id, resource_type, parts in await session.execute(query):
        for part in parts or ():
            key = (str(tenant_id), str(resource_type), str(part))
            counts[key] = counts.get(key, 0) + 1
    return [UnsearchablePart(*key, count) for key, count in sorted(counts.items())]


async def run_outcomes(
    session: AsyncSession, tenant_id: str, since: dt.datetime
) -> list[tuple[dt.datetime, str]]:
    """(started_at, outcome) of the tenant's sync runs started at or after ``since``, oldest first.

    Bucketing happens in Python: hour truncation is spelled differently on every backend.
    """
    rows = await session.execute(
        select(SyncRun.started_at, SyncRun.outcome)
        .join(Connection, Connection.id == SyncRun.connection_id)
        .where(Connection.tenant_id == tenant_id, SyncRun.started_at >= since)
        .order_by(SyncRun.started_at)
    )
    return [(started_at, outcome) for started_at, outcome in rows]


async def schema_revision(session: AsyncSession) -> str | None:
    """The Alembic revision the database is at (``None`` when never migrated).

    Read directly rather than through Alembic's MigrationContext, which logs at INFO each time:
    a load balancer probes readiness every few seconds.
    """

    def read(sync_session: Session) -> str | None:
        connection = sync_session.connection()
        if not inspect(connection).has_table("alembic_version"):
            return None
        revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        return None if revision is None else str(revision)

    return await session.run_sync(read)
