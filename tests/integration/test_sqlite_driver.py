"""The SQLite adapter: SQLAlchemy's answers unchanged, one trip to the driver's thread each."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc.db.engine import create_engine, create_sessionmaker
from syncsvc.db.sqlite_driver import OneTripConnection, OneTripDBAPI

metadata = MetaData()
notes = Table(
    "notes",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("name", String, unique=True, nullable=False),
    Column("size", Integer, nullable=False),
)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'driver.db'}")
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of every function queued for an aiosqlite connection's thread."""
    seen: list[str] = []
    queue: Callable[..., Awaitable[Any]] = aiosqlite.Connection._execute

    def counted(
        self: aiosqlite.Connection, fn: Callable[..., Any], *a: Any, **kw: Any
    ) -> Awaitable[Any]:
        seen.append(getattr(fn, "__name__", repr(fn)))
        return queue(self, fn, *a, **kw)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return seen


async def test_the_service_engine_uses_the_one_trip_adapter(engine: AsyncEngine) -> None:
    assert isinstance(engine.dialect.dbapi, OneTripDBAPI)
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        assert isinstance(raw.dbapi_connection, OneTripConnection)


async def test_rows_counts_ids_and_returning_are_sqlalchemys(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        first = await connection.execute(insert(notes).values(name="a", size=1))
        assert first.inserted_primary_key == (1,)
        many = await connection.execute(
            insert(notes), [{"name": "b", "size": 2}, {"name": "c", "size": 3}]
        )
        assert many.rowcount == 2
        changed = await connection.execute(update(notes).where(notes.c.size >= 2).values(size=9))
        assert changed.rowcount == 2
        returned = await connection.execute(
            insert(notes).values(name="d", size=4).returning(notes.c.seq, notes.c.name)
        )
        assert returned.all() == [(4, "d")]
    async with engine.connect() as connection:
        rows = (await connection.execute(select(notes.c.name, notes.c.size).order_by("seq"))).all()
    assert rows == [("a", 1), ("b", 9), ("c", 9), ("d", 4)]


async def test_errors_are_sqlalchemys_and_a_failed_write_rolls_back(engine: AsyncEngine) -> None:
    sessionmaker = create_sessionmaker(engine)

    async def twice() -> None:
        async with sessionmaker.begin() as session:
            await session.execute(insert(notes).values(name="same", size=1))
            await session.execute(insert(notes).values(name="same", size=2))

    with pytest.raises(IntegrityError):
        await twice()
    # The first insert went with the transaction, and the connection is usable again.
    async with sessionmaker() as session:
        assert (await session.execute(select(notes.c.name))).all() == []
        await session.execute(insert(notes).values(name="after", size=1))
        await session.commit()
        assert (await session.execute(select(notes.c.name))).scalars().all() == ["after"]


async def test_a_read_is_one_trip_and_a_write_two(engine: AsyncEngine, trips: list[str]) -> None:
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker.begin() as session:
        await session.execute(insert(notes).values(name="warm", size=1))
    trips.clear()
    async with sessionmaker.begin() as session:
        assert (await session.execute(select(notes.c.name))).scalars().all() == ["warm"]
    # The statement; no commit, since a read opens no transaction in SQLite.
    assert trips == ["_run_in_thread"]
    trips.clear()
    async with sessionmaker.begin() as session:
        await session.execute(update(notes).values(size=2))
    assert trips == ["_run_in_thread", "commit"]
