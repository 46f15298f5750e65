"""Deleting rows nobody needs any more, one small batch at a time (never commits)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from .base import rowcount
from .models.activity import WebhookDelivery
from .models.connections import ConnectLink, LaunchAttempt


async def _delete_batch(session: AsyncSession, model: Any, key: Any, where: Any, limit: int) -> int:
    # Select the ids first (LIMIT on DELETE is not portable), then delete exactly those.
    ids: list[Any] = list(
        await session.scalars(select(key).where(where).order_by(key).limit(limit))
    )
    if not ids:
        return 0
    result = await session.execute(
        delete(model).where(key.in_(ids)).execution_options(synchronize_session=False)
    )
    return rowcount(result)


async def purge_launch_attempts(session: AsyncSession, *, before: dt.datetime, limit: int) -> int:
    """Delete up to ``limit`` launch attempts that expired before ``before``; how many."""
    return await _delete_batch(
        session, LaunchAttempt, LaunchAttempt.id, LaunchAttempt.expires_at < before, limit
    )


async def purge_connect_links(session: AsyncSession, *, before: dt.datetime, limit: int) -> int:
    """Delete up to ``limit`` connect links used or expired before ``before``; how many.

    A link whose row is gone is refused as unknown, so deleting a used one never revives it.
    """
    done = or_(ConnectLink.expires_at < before, ConnectLink.used_at < before)
    return await _delete_batch(session, ConnectLink, ConnectLink.id, done, limit)


async def purge_webhook_deliveries(
    session: AsyncSession, *, before: dt.datetime, limit: int
) -> int:
    """Delete up to ``limit`` webhook deliveries finished (delivered or given up) and created
    before ``before``; how many."""
    finished = and_(WebhookDelivery.next_attempt_at.is_(None), WebhookDelivery.created_at < before)
    return await _delete_batch(session, WebhookDelivery, WebhookDelivery.id, finished, limit)
