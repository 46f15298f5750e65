"""Claiming rows of a work queue with a lease, so no two workers hold the same row.

Connections (refresh and sync), webhook deliveries and pending revocations are all claimed the
same way. Candidate ids are selected first; on PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets
concurrent claimers pass each other's rows. Then one guarded UPDATE sets ``lease_owner`` and
``lease_until`` while re-checking that each row is still claimable: on SQLite writers are
serialised, and the re-check means two claimers can never both win a row. An expired lease is a
crashed worker's and may be taken over. Commit promptly: the lease is the claim, not the lock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from .base import Base

T = TypeVar("T", bound=Base)


async def claim_rows(
    session: AsyncSession,
    model: type[T],
    key: InstrumentedAttribute[str],
    *,
    claimable: ColumnElement[bool],
    order_by: Sequence[Any],
    owner: str,
    now: dt.datetime,
    lease_seconds: int,
    limit: int,
    filters: Sequence[ColumnElement[bool]] = (),
) -> list[T]:
    """Lease up to ``limit`` claimable rows of ``model`` to ``owner``; the claimed rows, in order.

    ``claimable`` is checked when selecting and again in the UPDATE; ``filters`` only narrow the
    selection. ``key`` is the model's id column and ``lease_owner``/``lease_until`` its lease.
    """
    candidates = select(key).where(claimable, *filters).order_by(*order_by).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    ids = list(await session.scalars(candidates))
    if not ids:
        return []
    claimed = list(
        await session.scalars(
            update(model)
            .where(key.in_(ids), claimable)
            .values(lease_owner=owner, lease_until=now + dt.timedelta(seconds=lease_seconds))
            .returning(key)
            .execution_options(synchronize_session=False)
        )
    )
    if not claimed:
        return []
    rows = await session.scalars(
        select(model)
        .where(key.in_(claimed))
        .order_by(*order_by)
        .execution_options(populate_existing=True)
    )
    return list(rows)
