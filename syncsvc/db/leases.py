"""Claiming rows of a work queue with a lease, so no two workers hold the same row.

Connections (refresh and sync), webhook deliveries and pending revocations are all claimed the
same way. Candidates are selected first; on PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets
concurrent claimers pass each other's rows, and the selection and the lease are one statement
that finds the locked rows again by their physical address. Then one guarded UPDATE sets
``lease_owner`` and ``lease_until`` while re-checking that each row is still claimable: on
SQLite writers are serialised, and the re-check means two claimers can never both win a row. An
expired lease is a crashed worker's and may be taken over. Commit promptly: the lease is the
claim, not the lock.

Keep ``lease_owner`` and ``lease_until`` out of every index, and leave room on a large queue
table's pages (``fillfactor``, as ``connections`` does): PostgreSQL then writes a lease as a
heap-only update that touches no index. With ``lease_until`` indexed, keeping the indexes up to
date took most of the time of a 500-row claim among a million connections.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Row,
    Update,
    any_,
    func,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from .base import Base

T = TypeVar("T", bound=Base)
R = TypeVar("R")


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
    claim = _Claim(model, key, claimable, filters, order_by, owner, now, lease_seconds, limit)
    if claim.in_one_statement(session):
        rows = await session.scalars(
            claim.statement()
            .returning(model)
            .execution_options(populate_existing=True, synchronize_session=False)
        )
        return claim.in_order(list(rows))
    claimed = await claim.by_key(session)
    if not claimed:
        return []
    found = await session.scalars(
        select(model)
        .where(key.in_(claimed))
        .order_by(*order_by)
        .execution_options(populate_existing=True)
    )
    return list(found)


async def claim_columns(
    session: AsyncSession,
    model: type[Base],
    key: InstrumentedAttribute[str],
    columns: Sequence[InstrumentedAttribute[Any]],
    *,
    claimable: ColumnElement[bool],
    order_by: Sequence[InstrumentedAttribute[Any]],
    owner: str,
    now: dt.datetime,
    lease_seconds: int,
    limit: int,
    filters: Sequence[ColumnElement[bool]] = (),
) -> list[Row[Any]]:
    """:func:`claim_rows`, returning only ``columns`` of each claimed row (which must include
    the ``order_by`` attributes), in order.

    For a claimer that needs a few columns of each row: building whole objects of a wide row
    was most of a 500-row claim's time in the claiming process.
    """
    claim = _Claim(model, key, claimable, filters, order_by, owner, now, lease_seconds, limit)
    if claim.in_one_statement(session):
        rows = await session.execute(claim.statement().returning(*columns))
        return claim.in_order(list(rows))
    claimed = await claim.by_key(session)
    if not claimed:
        return []
    found = await session.execute(select(*columns).where(key.in_(claimed)).order_by(*order_by))
    return list(found)


@dataclass(frozen=True)
class _Claim:
    """One claim's selection and lease, as one statement (PostgreSQL) or by key (SQLite)."""

    model: type[Base]
    key: InstrumentedAttribute[str]
    claimable: ColumnElement[bool]
    filters: Sequence[ColumnElement[bool]]
    order_by: Sequence[Any]
    owner: str
    now: dt.datetime
    lease_seconds: int
    limit: int

    @property
    def lease(self) -> dict[str, Any]:
        until = self.now + dt.timedelta(seconds=self.lease_seconds)
        return {"lease_owner": self.owner, "lease_until": until}

    def in_one_statement(self, session: AsyncSession) -> bool:
        """PostgreSQL, ordered by attributes (the rows are put in order here, by them)."""
        return session.get_bind().dialect.name == "postgresql" and all(
            isinstance(o, InstrumentedAttribute) for o in self.order_by
        )

    def statement(self) -> Update:
        """PostgreSQL: select (skipping locked rows), lease and return in one round trip.

        The UPDATE finds the rows the selection locked by their physical address (``ctid``),
        not by a second walk of the primary key per row. A locked row cannot move before this
        statement ends; a row another transaction changed between this statement's snapshot and
        its lock is locked in its newest version, not visible to the snapshot, and so left
        unclaimed this time, never claimed twice. ``claimable`` is checked again as it is
        written.
        """
        # The selection must run exactly once. As an IN (sub-select) the planner may put it
        # inside a nested loop and re-run it per row; each re-run skips the rows this statement
        # already updated, so its LIMIT moves on and more than ``limit`` rows get leased. A
        # MATERIALIZED CTE is computed once, and ARRAY(...) reads it once.
        table = str(self.model.__tablename__)
        picked = (
            select(literal_column("ctid").label("row_ctid"))
            .select_from(self.model)
            .where(self.claimable, *self.filters)
            .order_by(*self.order_by)
            .limit(self.limit)
            .with_for_update(skip_locked=True)
            .cte("picked")
            .prefix_with("MATERIALIZED", dialect="postgresql")
        )
        addresses = func.array(select(picked.c.row_ctid).scalar_subquery())
        return (
            update(self.model)
            .where(literal_column(f"{table}.ctid") == any_(addresses), self.claimable)
            .values(**self.lease)
        )

    def in_order(self, rows: list[R]) -> list[R]:
        """``RETURNING`` gives no order (and PostgreSQL allows no window function beside ``FOR
        UPDATE``): the rows sorted by the attributes the selection went by."""
        names = [attribute.key for attribute in self.order_by]
        return sorted(rows, key=lambda row: tuple(_sortable(getattr(row, n)) for n in names))

    async def by_key(self, session: AsyncSession) -> list[str]:
        """Select the ids, then lease them with a guarded UPDATE; the ids leased."""
        candidates = (
            select(self.key).where(self.claimable, *self.filters).order_by(*self.order_by)
        ).limit(self.limit)
        if session.get_bind().dialect.name == "postgresql":
            candidates = candidates.with_for_update(skip_locked=True)
        ids = list(await session.scalars(candidates))
        if not ids:
            return []
        return list(
            await session.scalars(
                update(self.model)
                .where(self.key.in_(ids), self.claimable)
                .values(**self.lease)
                .returning(self.key)
                .execution_options(synchronize_session=False)
            )
        )


def _sortable(value: Any) -> tuple[bool, Any]:
    # NULLs sort last, as PostgreSQL sorts them ascending.
    return (value is None, value)
