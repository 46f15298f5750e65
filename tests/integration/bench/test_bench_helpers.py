"""The bench's own plumbing: statements over a whole fleet's ids, and what its options accept."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.bench import fleet_ops, world
from syncsvc.cli import build_parser
from syncsvc.db.columns import new_id
from syncsvc.db.models.connections import Connection
from tests.integration.dbdata import add_tenant

#: More ids than one statement may bind on either database (32,767 on PostgreSQL).
MANY = 40_000


async def test_a_fleet_larger_than_one_statements_parameters_is_worked_in_slices(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    async with sessionmaker.begin() as session:
        tenant = await add_tenant(session)
    loaded = await world.bulk_connections(sessionmaker, tenant, 3, due=0)
    # The loaded connections hidden among ids that match nothing, past the parameter limit.
    ids = [new_id() for _ in range(MANY)] + loaded

    await world.make_due(sessionmaker, ids)
    since = dt.datetime.now(dt.UTC)
    proof = await fleet_ops.double_work(sessionmaker, ids, since, 1)

    async with sessionmaker() as session:
        due = await session.scalar(
            select(func.count()).where(Connection.next_sync_at <= dt.datetime.now(dt.UTC))
        )
    assert due == 3
    assert proof["runs"] == 0
    assert proof["connections"] == MANY + 3
    await world.drop_connections(sessionmaker, ids)
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Connection)) == 0


def test_the_fleet_latency_may_be_zero_but_not_negative(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    assert parser.parse_args(["bench", "--latency-ms", "0"]).latency_ms == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--latency-ms", "-300"])
    assert "must not be negative" in capsys.readouterr().err
