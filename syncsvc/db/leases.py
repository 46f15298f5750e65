"""Claiming rows of a work queue with a lease, so no two workers hold the same row.

Connections (refresh and sync), webhook deliveries and pending revocations are all claimed the
same way. Candidate ids are selected first; on PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets
concurrent claimers pass each other's rows. Then one guarded UPDATE sets ``lease_owner`` and
``lease_until`` while re-checking that each row is still claimable: on SQLite writers are
serialised, and the re-check means two claimers can never both win a row. An expired lease is a
crashed worker's and may be taken over. Commit promptly: the lease is the claim, not the lock.

Keep ``lease_owner`` and ``lease_until`` out of every index, and leave room on a large queue
table's pages (``fillfactor``, as ``connections`` does): PostgreSQL then writes a lease as a
heap-only update that touches no index. With ``lease_until`` indexed, keeping the indexes up to
date took most of the time of a 500-row claim among a million connections.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from .base import Base

T = TypeVar("T", bound=Base)


def lease_free(lease_until: InstrumentedAttribute[Any], now: dt.datetime) -> ColumnElement[bool]:
    """Nobody holds an unexpired lease (an expired one is a crashed worker's, free to take)."""
    return or_(lease_until.is_(None), lease_until <= now)


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
    lease = {"lease_owner": owner, "lease_until": now + dt.timedelta(seconds=lease_seconds)}
    attributes = [o for o in order_by if isinstance(o, InstrumentedAttribute)]
    if session.get_bind().dialect.name == "postgresql" and len(attributes) == len(order_by):
        return await _claim_in_one_statement(
            session, model, key, candidates, claimable=claimable, lease=lease, order_by=attributes
        )
    if session.get_bind().dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    ids = list(await session.scalars(candidates))
    if not ids:
        return []
    claimed = list(
        await session.scalars(
            update(model)
            .where(key.in_(ids), claimable)
            .values(**lease)
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


async def _claim_in_one_statement(
    session: AsyncSession,
    model: type[T],
    key: InstrumentedAttribute[str],
    candidates: Select[Any],
    *,
    claimable: ColumnElement[bool],
    lease: dict[str, Any],
    order_by: Sequence[InstrumentedAttribute[Any]],
) -> list[T]:
    """PostgreSQL: select (skipping locked rows), lease and return the rows in one round trip.

    ``RETURNING`` gives no order and PostgreSQL allows no window function beside ``FOR
    UPDATE``, so the rows are put in order here, by the same attributes the selection used.
    """
    # The selection must run exactly once. As an IN (sub-select) the planner may put it inside
    # a nested loop and re-run it per row; each re-run skips the rows this statement already
    # updated, so its LIMIT moves on and more than ``limit`` rows get leased. A MATERIALIZED
    # CTE is computed once; a re-scan reads the stored rows.
    picked = (
        candidates.with_for_update(skip_locked=True)
        .cte("picked")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    statement = (
        update(model)
        .where(key.in_(select(picked)), claimable)
        .values(**lease)
        .returning(model)
        .execution_options(populate_existing=True, synchronize_session=False)
    )
    rows = list(await session.scalars(statement))
    names = [attribute.key for attribute in order_by]
    return sorted(rows, key=lambda row: tuple(_sortable(getattr(row, n)) for n in names))


def _sortable(value: Any) -> tuple[bool, Any]:
    # NULLs sort last, as PostgreSQL sorts them ascending.
    return (value is None, value)
