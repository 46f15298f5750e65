"""Recording events (refresh and sync outcomes, launches, disconnects) for health and metrics."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from .models.activity import Event
from .prebuilt import table_of

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
    row = event_row(
        tenant_id=tenant_id,
        kind=kind,
        outcome=outcome,
        at=at,
        connection_id=connection_id,
        error_class=error_class,
        resource_type=resource_type,
        detail=detail,
        count=count,
    )
    session.add(Event(**row))
    await session.flush()


#: Built once: the events of a run go in one executemany of this statement.
_INSERT = insert(table_of(Event))


def event_row(
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
) -> dict[str, Any]:
    """One event as :func:`add_events` takes it (the same rules as :func:`add_event`)."""
    return {
        "tenant_id": tenant_id,
        "connection_id": connection_id,
        "kind": kind,
        "outcome": outcome,
        "at": at,
        "error_class": error_class,
        "resource_type": resource_type,
        "detail": detail[:DETAIL_LENGTH] if detail else None,
        "count": count,
    }


async def add_events(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Record several events (rows of :func:`event_row`) in one statement."""
    if rows:
        await session.execute(_INSERT, list(rows))
