"""Reads of synced resources (a host's change feed, one resource, its history); none commits."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from .models.records import Resource, ResourceHistory
from .prebuilt import table_of


async def has_resources(session: AsyncSession, connection_id: str, resource_type: str) -> bool:
    """Whether a connection has any stored resource of one type (deleted ones included)."""
    found = await session.scalar(
        select(Resource.resource_id)
        .where(Resource.connection_id == connection_id, Resource.resource_type == resource_type)
        .limit(1)
    )
    return found is not None


_RESOURCES = table_of(Resource)
#: Built once: every full pull of a type synced before reads these ids.
_LIVE_IDS = select(_RESOURCES.c.resource_id).where(
    _RESOURCES.c.connection_id == bindparam("connection_id"),
    _RESOURCES.c.resource_type == bindparam("resource_type"),
    _RESOURCES.c.deleted_at.is_(None),
)


async def live_resource_ids(
    session: AsyncSession, connection_id: str, resource_type: str
) -> set[str]:
    """Ids of a connection's resources of one type that are not flagged deleted."""
    rows = await session.execute(
        _LIVE_IDS, {"connection_id": connection_id, "resource_type": resource_type}
    )
    return {str(row[0]) for row in rows}


_LIVE_IDS_OF_TYPES = select(_RESOURCES.c.resource_type, _RESOURCES.c.resource_id).where(
    _RESOURCES.c.connection_id == bindparam("connection_id"),
    _RESOURCES.c.resource_type.in_(bindparam("resource_types", expanding=True)),
    _RESOURCES.c.deleted_at.is_(None),
)


async def live_resource_ids_of_types(
    session: AsyncSession, connection_id: str, resource_types: Sequence[str]
) -> dict[str, set[str]]:
    """:func:`live_resource_ids` of several types in one read (every type asked has a set)."""
    found: dict[str, set[str]] = {name: set() for name in resource_types}
    rows = await session.execute(
        _LIVE_IDS_OF_TYPES,
        {"connection_id": connection_id, "resource_types": list(resource_types)},
    )
    for resource_type, resource_id in rows:
        found[str(resource_type)].add(str(resource_id))
    return found


#: Ids per ``IN`` list when bodies are read by id (well under every database's parameter cap).
_ID_BATCH = 500


async def live_bodies(
    session: AsyncSession, connection_id: str, resource_type: str, resource_ids: Sequence[str]
) -> dict[str, bytes]:
    """The stored bodies of the given live resources of one type, by id."""
    found: dict[str, bytes] = {}
    for start in range(0, len(resource_ids), _ID_BATCH):
        batch = list(resource_ids[start : start + _ID_BATCH])
        rows = await session.execute(
            select(Resource.resource_id, Resource.body).where(
                Resource.connection_id == connection_id,
                Resource.resource_type == resource_type,
                Resource.resource_id.in_(batch),
                Resource.deleted_at.is_(None),
            )
        )
        for resource_id, body in rows.tuples():
            found[resource_id] = body
    return found


async def changes_since(
    session: AsyncSession, connection_id: str, after_seq: int, *, limit: int = 500
) -> list[Resource]:
    """A connection's resources written after ``after_seq``, in seq order (a host's cursor)."""
    return list(
        await session.scalars(
            select(Resource)
            .where(Resource.connection_id == connection_id, Resource.seq > after_seq)
            .order_by(Resource.seq)
            .limit(limit)
        )
    )


async def get_resource(
    session: AsyncSession, connection_id: str, resource_type: str, resource_id: str
) -> Resource | None:
    """One stored resource."""
    return await session.get(Resource, (connection_id, resource_type, resource_id))


async def resource_history(
    session: AsyncSession, connection_id: str, resource_type: str, resource_id: str
) -> list[ResourceHistory]:
    """Earlier versions of one resource, oldest first."""
    return list(
        await session.scalars(
            select(ResourceHistory)
            .where(
                ResourceHistory.connection_id == connection_id,
                ResourceHistory.resource_type == resource_type,
                ResourceHistory.resource_id == resource_id,
            )
            .order_by(ResourceHistory.id)
        )
    )
