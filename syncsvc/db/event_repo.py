"""Recording events (refresh and sync outcomes, launches, disconnects) for health and metrics."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.ext.asyncio import AsyncSession

from .models.activity import Event

DETAIL_LENGTH = 500


async def add_event(
    session: AsyncSession,
    *,
    tenant_id: str,
    kind: str,
    outcome: str,
    at: dt.datetime,
    connection_id: str | None = None,
    error_class: str | None = None,
    resource_type: str | None = None,
    detail: str | None = None,
    count: int = 1,
) -> None:
    """Record one event. ``detail`` is plain words only: never a token, body or identifier."""
    session.add(
        Event(
            tenant_id=tenant_id,
            connection_id=connection_id,
            kind=kind,
            outcome=outcome,
            at=at,
            error_class=error_class,
            resource_type=resource_type,
            detail=detail[:DETAIL_LENGTH] if detail else None,
            count=count,
        )
    )
    await session.flush()
