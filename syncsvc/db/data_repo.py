"""Read queries of the host-application data API; each takes an ``AsyncSession``, none commits.

Every query that returns resources is scoped by connection ids the caller has already resolved
for one user, so a wrong id can only ever yield nothing, never another user's rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .attachment_repo import AttachmentSummary, summaries
from .models.connections import Connection, Credential, Tenant
from .models.records import Resource, ResourceCursor, SyncState
from .reference_repo import ReferenceCounts, reference_counts


@dataclass(frozen=True, slots=True)
class ConnectionFacts:
    """A connection with what its API view needs besides the row itself."""

    connection: Connection
    tenant_name: str
    tenant_display_name: str
    has_refresh_token: bool
    #: Live (not deleted) resources per type.
    resource_counts: dict[str, int]
    states: dict[str, SyncState]
    tenant: Tenant | None = None
    access_expires_at: dt.datetime | None = None
    #: The record's references to shared resources.
    references: ReferenceCounts | None = None
    #: What became of its documents' attachments (None: none found yet).
    attachments: AttachmentSummary | None = None


@dataclass(frozen=True, slots=True)
class ChangedRow:
    """One resource row of a change feed page."""

    connection_id: str
    seq: int
    resource_type: str
    resource_id: str
    body: bytes
    last_updated: dt.datetime | None
    deleted_at: dt.datetime | None
    deleted_reason: str | None


async def _facts(session: AsyncSession, connections: Sequence[Connection]) -> list[ConnectionFacts]:
    if not connections:
        return []
    ids = [c.id for c in connections]
    tenants = {
        t.id: t
        for t in await session.scalars(
            select(Tenant).where(Tenant.id.in_({c.tenant_id for c in connections}))
        )
    }
    with_refresh: set[str] = set()
    access_expiry: dict[str, dt.datetime | None] = {}
    for cid, has_refresh, expires in await session.execute(
        select(
            Credential.connection_id,
            Credential.refresh_token_enc.is_not(None),
            Credential.access_expires_at,
        ).where(Credential.connection_id.in_(ids))
    ):
        access_expiry[str(cid)] = expires
        if has_refresh:
            with_refresh.add(str(cid))
    counts: dict[str, dict[str, int]] = {cid: {} for cid in ids}
    rows = await session.execute(
        select(Resource.connection_id, Resource.resource_type, func.count())
        .where(Resource.connection_id.in_(ids), Resource.deleted_at.is_(None))
        .group_by(Resource.connection_id, Resource.resource_type)
        .order_by(Resource.connection_id, Resource.resource_type)
    )
    for cid, rtype, count in rows:
        counts[str(cid)][str(rtype)] = int(count)
    states: dict[str, dict[str, SyncState]] = {cid: {} for cid in ids}
    for state in await session.scalars(
        select(SyncState)
        .where(SyncState.connection_id.in_(ids))
        .order_by(SyncState.connection_id, SyncState.resource_type)
    ):
        states[state.connection_id][state.resource_type] = state
    attachments = await summaries(session, ids)
    facts = []
    for connection in connections:
        tenant = tenants.get(connection.tenant_id)
        facts.append(
            ConnectionFacts(
                connection=connection,
                tenant_name=tenant.name if tenant else "",
                tenant_display_name=tenant.display_name if tenant else "",
                has_refresh_token=connection.id in with_refresh,
                resource_counts=counts[connection.id],
                states=states[connection.id],
                tenant=tenant,
                access_expires_at=access_expiry.get(connection.id),
                references=await reference_counts(session, connection.id),
                attachments=attachments.get(connection.id),
            )
        )
    return facts


async def user_connections(session: AsyncSession, user_id: str) -> list[ConnectionFacts]:
    """Every connection of one host-app user, oldest first, with its facts."""
    connections = await session.scalars(
        select(Connection)
        .where(Connection.user_id == user_id)
        .order_by(Connection.created_at, Connection.id)
    )
    return await _facts(session, list(connections))


async def connection_facts(session: AsyncSession, connection_id: str) -> ConnectionFacts | None:
    """One connection with its facts, or None."""
    connection = await session.get(Connection, connection_id)
    if connection is None:
        return None
    [facts] = await _facts(session, [connection])
    return facts


async def connection_ids_of_user(session: AsyncSession, user_id: str) -> list[str]:
    """The ids of a user's connections, in the feed's order (by id)."""
    return list(
        await session.scalars(
            select(Connection.id).where(Connection.user_id == user_id).order_by(Connection.id)
        )
    )


async def request_sync_now(session: AsyncSession, connection_id: str, *, now: dt.datetime) -> bool:
    """Make an active connection due for sync now; False if it is not active (or unknown)."""
    result = await session.execute(
        update(Connection)
        .where(Connection.id == connection_id, Connection.status == "active")
        .values(next_sync_at=now, updated_at=now)
        .returning(Connection.id)
        .execution_options(synchronize_session=False)
    )
    return result.scalar_one_or_none() is not None


async def last_seqs(session: AsyncSession, connection_ids: Sequence[str]) -> dict[str, int]:
    """The last seq handed out per connection (only connections that have written)."""
    if not connection_ids:
        return {}
    rows = await session.execute(
        select(ResourceCursor.connection_id, ResourceCursor.last_seq).where(
            ResourceCursor.connection_id.in_(list(connection_ids))
        )
    )
    return {str(cid): int(seq) for cid, seq in rows}


async def seqs_after(
    session: AsyncSession,
    connection_id: str,
    after_seq: int,
    *,
    types: Sequence[str] | None,
    limit: int,
) -> list[int]:
    """Up to ``limit`` seqs of a connection's rows after ``after_seq``, ascending."""
    query = select(Resource.seq).where(
        Resource.connection_id == connection_id, Resource.seq > after_seq
    )
    if types:
        query = query.where(Resource.resource_type.in_(list(types)))
    return [int(s) for s in await session.scalars(query.order_by(Resource.seq).limit(limit))]


async def rows_between(
    session: AsyncSession,
    connection_id: str,
    after_seq: int,
    upto_seq: int,
    *,
    types: Sequence[str] | None,
    limit: int,
) -> list[ChangedRow]:
    """A connection's rows with ``after_seq < seq <= upto_seq``, ascending, at most ``limit``."""
    query = select(
        Resource.seq,
        Resource.resource_type,
        Resource.resource_id,
        Resource.body,
        Resource.last_updated,
        Resource.deleted_at,
        Resource.deleted_reason,
    ).where(
        Resource.connection_id == connection_id,
        Resource.seq > after_seq,
        Resource.seq <= upto_seq,
    )
    if types:
        query = query.where(Resource.resource_type.in_(list(types)))
    rows = await session.execute(query.order_by(Resource.seq).limit(limit))
    return [
        ChangedRow(
            connection_id=connection_id,
            seq=int(seq),
            resource_type=str(rtype),
            resource_id=str(rid),
            body=bytes(body),
            last_updated=last_updated,
            deleted_at=deleted_at,
            deleted_reason=None if reason is None else str(reason),
        )
        for seq, rtype, rid, body, last_updated, deleted_at, reason in rows
    ]


async def fhir_bases(session: AsyncSession, connection_ids: Sequence[str]) -> Mapping[str, str]:
    """The FHIR base each connection is bound to."""
    if not connection_ids:
        return {}
    rows = await session.execute(
        select(Connection.id, Connection.fhir_base).where(Connection.id.in_(list(connection_ids)))
    )
    return {str(cid): str(base) for cid, base in rows}
