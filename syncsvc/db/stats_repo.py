"""Read-only summaries for people: resource counts, connection statuses, sync outcomes.

These feed the patient's status page, ``connections list``, the demo's summary and the operators'
health endpoints; like every repository function they take a session and never commit.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .models.records import Resource


async def count_resources(session: AsyncSession, connection_id: str) -> dict[str, int]:
    """Live (not deleted) resources of a connection, per resource type."""
    rows = await session.execute(
        select(Resource.resource_type, func.count())
        .where(Resource.connection_id == connection_id, Resource.deleted_at.is_(None))
        .group_by(Resource.resource_type)
        .order_by(Resource.resource_type)
    )
    return {resource_type: int(count) for resource_type, count in rows}
