"""Leasing due connections: what a claim returns, in which order, and what a lease write costs."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db import connection_claims
from syncsvc.db.models.connections import Connection

from .dbdata import add_connection, add_tenant, utcnow

Sessionmaker = async_sessionmaker[AsyncSession]
LEASE_SECONDS = 60
#: The PostgreSQL-only tests: SKIP LOCKED and heap-only updates have no SQLite counterpart.
ONLY_POSTGRES = pytest.mark.parametrize(
    "db_backend", [pytest.param("postgres", marks=pytest.mark.postgres)]
)


async def _connections(
    sessionmaker: Sessionmaker, now: dt.datetime, ages: list[int], **fields: object
) -> list[str]:
    """Connections due ``age`` seconds ago each (equal ages tie), in insertion order."""
    async with sessionmaker.begin() as session:
        tenant = await add_tenant(session)
        ids = []
        for age in ages:
            connection = await add_connection(
                session, tenant, next_sync_at=now - dt.timedelta(seconds=age), **fields
            )
            ids.append(connection.id)
    return ids


async def _claim(sessionmaker: Sessionmaker, owner: str, now: dt.datetime, limit: int) -> list[str]:
    async with sessionmaker.begin() as session:
        claimed = await connection_claims.claim_due_connections(
            session, owner, now, LEASE_SECONDS, limit
        )
    return [connection.id for connection in claimed]


def _due_order(ages: dict[str, int]) -> list[str]:
    return sorted(ages, key=lambda connection_id: (-ages[connection_id], connection_id))


async def test_a_claim_returns_what_is_due_in_due_order(sessionmaker: Sessionmaker) -> None:
    now = utcnow()
    ages = [30, 10, 50, 10, 20, 50, 10]
    due = await _connections(sessionmaker, now, ages)
    expired, live = await _connections(sessionmaker, now, [40, 40])
    later = await _connections(sessionmaker, now, [-60])
    backing_off = await _connections(
        sessionmaker, now, [60], backoff_until=now + dt.timedelta(minutes=5)
    )
    # A back-off that has ended is due from its end, not from the older due time.
    backed_off = await _connections(
        sessionmaker, now, [600], backoff_until=now - dt.timedelta(seconds=25)
    )
    inactive = await _connections(sessionmaker, now, [60], status="needs_reauth")
    async with sessionmaker.begin() as session:
        for connection_id, until in ((expired, -1), (live, 300)):
            await session.execute(
                update(Connection)
                .where(Connection.id == connection_id)
                .values(lease_owner="other", lease_until=now + dt.timedelta(seconds=until))
            )

    async with sessionmaker.begin() as session:
        claimed = await connection_claims.claim_due_connections(
            session, "me", now, LEASE_SECONDS, 20
        )

    # An expired lease is taken over; a live one, a future due time, a back-off and an
    # inactive status each keep a connection out.
    assert {live, *later, *backing_off, *inactive}.isdisjoint(c.id for c in claimed)
    ages_due = {**dict(zip(due, ages, strict=True)), expired: 40, backed_off[0]: 25}
    assert [c.id for c in claimed] == _due_order(ages_due)
    # What the work needs of each, as stored; the lease is this claimer's.
    async with sessionmaker() as session:
        for connection in claimed:
            stored = await session.get(Connection, connection.id)
            assert stored is not None
            for name in ("tenant_id", "next_refresh_at", "next_sync_at", "next_due_at"):
                assert getattr(connection, name) == getattr(stored, name)
            assert stored.lease_owner == "me"
            assert stored.lease_until == now + dt.timedelta(seconds=LEASE_SECONDS)


async def test_successive_claims_take_the_next_due_batch(sessionmaker: Sessionmaker) -> None:
    now = utcnow()
    ages = [5, 25, 15, 35, 45]
    ids = await _connections(sessionmaker, now, ages)
    order = _due_order(dict(zip(ids, ages, strict=True)))

    assert await _claim(sessionmaker, "first", now, 2) == order[:2]
    assert await _claim(sessionmaker, "second", now, 2) == order[2:4]
    assert await _claim(sessionmaker, "third", now, 2) == order[4:]
    assert await _claim(sessionmaker, "fourth", now, 2) == []


async def test_a_closing_run_hands_back_only_a_lease_it_still_holds(
    sessionmaker: Sessionmaker,
) -> None:
    now = utcnow()
    ids = await _connections(sessionmaker, now, [10, 20, 30])
    held, expired, taken = sorted(ids)
    async with sessionmaker.begin() as session:
        await session.execute(
            update(Connection)
            .where(Connection.id.in_(ids))
            .values(lease_owner="me", lease_until=now + dt.timedelta(seconds=LEASE_SECONDS))
        )
        # This process stalled past one lease, and another process took over a second.
        await session.execute(
            update(Connection)
            .where(Connection.id == expired)
            .values(lease_until=now - dt.timedelta(seconds=1))
        )
        await session.execute(
            update(Connection).where(Connection.id == taken).values(lease_owner="other")
        )

    async with sessionmaker.begin() as session:
        released = [
            await connection_claims.release_held_lease(session, connection_id, "me", now=now)
            for connection_id in (held, expired, taken)
        ]
    async with sessionmaker() as session:
        rows = await session.execute(select(Connection.id, Connection.lease_owner))
        owners = {row[0]: row[1] for row in rows}

    assert released == [True, False, False]
    assert owners == {held: None, expired: "me", taken: "other"}


@ONLY_POSTGRES
async def test_claimers_in_open_transactions_pass_each_other(sessionmaker: Sessionmaker) -> None:
    now = utcnow()
    ages = [10, 20, 30, 40, 50, 60]
    ids = await _connections(sessionmaker, now, ages)
    order = _due_order(dict(zip(ids, ages, strict=True)))

    async with sessionmaker.begin() as first:
        held = await connection_claims.claim_due_connections(first, "first", now, LEASE_SECONDS, 4)
        # The first claim is not committed: its rows are locked, and skipped, not waited for.
        async with sessionmaker.begin() as second:
            passed = await connection_claims.claim_due_connections(
                second, "second", now, LEASE_SECONDS, 4
            )

    assert [c.id for c in held] == order[:4]
    assert [c.id for c in passed] == order[4:]


@ONLY_POSTGRES
async def test_taking_and_handing_back_a_lease_writes_no_index(
    sessionmaker: Sessionmaker,
) -> None:
    now = utcnow()
    ids = await _connections(sessionmaker, now, [10, 20, 30])

    async with sessionmaker.begin() as session:
        claimed = await connection_claims.claim_due_connections(
            session, "me", now, LEASE_SECONDS, 10
        )
        for connection in claimed:
            assert await connection_claims.release_lease(session, connection.id, "me")
        updates = (
            await session.execute(
                text(
                    "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables "
                    "WHERE relname = 'connections'"
                )
            )
        ).one()

    # Heap-only (HOT) updates: an index on a lease column, or pages with no room for a row's
    # next version, would make each of these write every index of the table.
    assert sorted(c.id for c in claimed) == sorted(ids)
    assert tuple(updates) == (2 * len(ids), 2 * len(ids))


@ONLY_POSTGRES
async def test_a_claim_reads_only_due_entries_of_its_index(sessionmaker: Sessionmaker) -> None:
    now = utcnow()
    due = await _connections(sessionmaker, now, [30, 20, 10])
    # Past their sync time but backing off, not due yet, or inactive: none is read.
    await _connections(sessionmaker, now, [60] * 20, backoff_until=now + dt.timedelta(hours=1))
    await _connections(sessionmaker, now, [-60] * 20)
    await _connections(sessionmaker, now, [60] * 20, status="needs_reauth")

    async with sessionmaker.begin() as session:
        # Statistics, as autovacuum keeps them: without any, the planner may find the rows
        # the selection locked by walking the index again rather than by their addresses.
        await session.execute(text("ANALYZE connections"))
    async with sessionmaker.begin() as session:
        # The plan a prepared statement settles on: no parameter values to plan with.
        await session.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
        before = await _index_entries_read(session)
        claimed = await connection_claims.claim_due_connections(
            session, "me", now, LEASE_SECONDS, 10
        )
        after = await _index_entries_read(session)

    assert [c.id for c in claimed] == due
    read = {name: after[name] - before.get(name, 0) for name in after}
    assert {name: count for name, count in read.items() if count} == {
        "ix_connections_due": len(due)
    }


async def _index_entries_read(session: AsyncSession) -> dict[str, int]:
    """Live rows each index of ``connections`` led this backend to so far (counts not
    yet sent to the statistics collector, which may include earlier transactions')."""
    rows = await session.execute(
        text(
            "SELECT CAST(indexrelid AS regclass)::text, "
            "pg_stat_get_xact_tuples_fetched(indexrelid) FROM pg_index "
            "WHERE indrelid = CAST('connections' AS regclass)"
        )
    )
    return {str(name): int(count) for name, count in rows.all()}
