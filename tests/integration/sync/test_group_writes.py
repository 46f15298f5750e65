"""Pages written through the group writer's batch: the same rows, seqs and history as one by one."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db import disconnect_repo, repo, resource_repo, resource_writes
from syncsvc.db.models.connections import Connection
from syncsvc.db.models.records import Resource
from syncsvc.errors import Transient
from syncsvc.sync.pipeline.batch import PageBatch, PendingRow
from syncsvc.sync.pipeline.prepare import PreparedPage, prepare_page
from syncsvc.sync.pipeline.store import Counts, store_page
from syncsvc.sync.pipeline.writer import POSTGRES_LANES, GroupWriter, GroupWriters, write_lanes
from tests.integration.dbdata import add_connection, add_tenant, utcnow

PATIENT = "p-1"


def _observation(rid: str, value: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "meta": {"versionId": str(value), "lastUpdated": "2026-01-02T03:04:05.678Z"},
        "status": "final",
        "subject": {"reference": f"Patient/{PATIENT}"},
        "valueQuantity": {"value": value},
    }


def _page(*resources: dict[str, Any]) -> PreparedPage:
    return prepare_page(list(resources), "Observation", PATIENT)


async def _connections(sessionmaker: async_sessionmaker[AsyncSession], count: int) -> list[str]:
    async with sessionmaker.begin() as session:
        tenant = await add_tenant(session)
        return [
            (await add_connection(session, tenant, patient_id=PATIENT)).id for _ in range(count)
        ]


def _page_of_a(connection_id: str, now: dt.datetime) -> Any:
    """A page-write unit storing Observation ``a`` (version 1) for ``connection_id``."""

    async def unit(session: AsyncSession, batch: PageBatch) -> Counts:
        return await store_page(
            session, connection_id, _page(_observation("a", 1)), now=now, batch=batch
        )

    return unit


async def _rows(sessionmaker: async_sessionmaker[AsyncSession], connection_id: str) -> list[Any]:
    async with sessionmaker() as session:
        found = await session.scalars(
            select(Resource).where(Resource.connection_id == connection_id).order_by(Resource.seq)
        )
        return [(r.resource_id, r.seq, r.body) for r in found]


async def test_a_group_of_pages_gets_each_connections_seqs_in_page_order(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    first, second = await _connections(sessionmaker, 2)
    writer = GroupWriter(sessionmaker)
    now = utcnow()
    pages = [
        (first, _page(_observation("a", 1), _observation("b", 1))),
        (second, _page(_observation("x", 1))),
        (first, _page(_observation("c", 1))),
        (second, _page(_observation("y", 1), _observation("z", 1))),
    ]
    known: dict[str, set[str]] = {first: set(), second: set()}

    def write(cid: str, page: PreparedPage) -> Any:
        async def unit(session: AsyncSession, batch: PageBatch) -> Counts:
            return await store_page(session, cid, page, now=now, stored_ids=known[cid], batch=batch)

        return unit

    # Submitted together, so they share one transaction and one batch.
    counts = await asyncio.gather(
        *(writer.submit_batched(write(c, p), record_of=c) for c, p in pages)
    )

    assert writer.groups == 1
    assert [c.new for c in counts] == [2, 1, 1, 2]
    assert [(rid, seq) for rid, seq, _ in await _rows(sessionmaker, first)] == [
        ("a", 1),
        ("b", 2),
        ("c", 3),
    ]
    assert [(rid, seq) for rid, seq, _ in await _rows(sessionmaker, second)] == [
        ("x", 1),
        ("y", 2),
        ("z", 3),
    ]


async def test_an_id_twice_in_one_group_is_compared_with_the_waiting_row_and_kept_once(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    (connection_id,) = await _connections(sessionmaker, 1)
    now = utcnow()
    async with sessionmaker.begin() as session:
        await store_page(session, connection_id, _page(_observation("a", 1)), now=now)

    writer = GroupWriter(sessionmaker)
    known: set[str] | None = None  # the type had resources before: every id is looked up
    pages = [
        _page(_observation("a", 2), _observation("b", 1)),  # a changed
        _page(_observation("a", 2)),  # the same version again: unchanged against the batch
        _page(_observation("a", 3)),  # changed again within the group
    ]

    def write(page: PreparedPage) -> Any:
        async def unit(session: AsyncSession, batch: PageBatch) -> Counts:
            return await store_page(
                session, connection_id, page, now=now, stored_ids=known, batch=batch
            )

        return unit

    counts = await asyncio.gather(
        *(writer.submit_batched(write(p), record_of=connection_id) for p in pages)
    )

    assert writer.groups == 1
    assert [(c.new, c.changed, c.unchanged) for c in counts] == [(1, 1, 0), (0, 0, 1), (0, 1, 0)]
    rows = await _rows(sessionmaker, connection_id)
    assert [(rid, seq) for rid, seq, _ in rows] == [("b", 3), ("a", 4)]
    assert b'"value":3' in rows[1][2]
    async with sessionmaker() as session:
        history = await resource_repo.resource_history(session, connection_id, "Observation", "a")
    # Version 1 (stored before) and version 2 (written earlier in the same group) both kept.
    assert [b'"value":1' in h.body for h in history] == [True, False]
    assert [b'"value":2' in h.body for h in history] == [False, True]


async def test_a_resource_taken_for_absent_is_never_overwritten_the_write_fails_instead(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    (connection_id,) = await _connections(sessionmaker, 1)
    async with sessionmaker.begin() as session:
        await store_page(session, connection_id, _page(_observation("a", 1)), now=utcnow())
    (before,) = await _rows(sessionmaker, connection_id)

    # An empty stored_ids says the type had nothing: "a" is written as absent, with no lookup,
    # as a first sync writes; a row already there (another writer's) must stop the write.
    with pytest.raises(Transient) as raised:
        async with sessionmaker.begin() as session:
            await store_page(
                session, connection_id, _page(_observation("a", 2)), now=utcnow(), stored_ids=set()
            )

    assert raised.value.reason == "concurrent_write"
    assert await _rows(sessionmaker, connection_id) == [before]


async def test_new_and_changed_resources_of_one_group_are_all_written_in_order(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    (connection_id,) = await _connections(sessionmaker, 1)
    async with sessionmaker.begin() as session:
        await store_page(
            session, connection_id, _page(_observation("a", 1), _observation("b", 1)), now=utcnow()
        )
    writer = GroupWriter(sessionmaker)

    def write(page: PreparedPage) -> Any:
        async def unit(session: AsyncSession, batch: PageBatch) -> Counts:
            return await store_page(session, connection_id, page, now=utcnow(), batch=batch)

        return unit

    pages = [
        _page(_observation("c", 1), _observation("a", 2)),  # c new, a changed
        _page(_observation("b", 2), _observation("d", 1)),  # b changed, d new
    ]
    counts = await asyncio.gather(
        *(writer.submit_batched(write(page), record_of=connection_id) for page in pages)
    )

    assert writer.groups == 1
    assert [(c.new, c.changed) for c in counts] == [(1, 1), (1, 1)]
    expected = {item.resource_id: item.body for page in pages for item in page.items}
    rows = await _rows(sessionmaker, connection_id)
    assert [(rid, seq) for rid, seq, _ in rows] == [("c", 3), ("a", 4), ("b", 5), ("d", 6)]
    # Whole bodies: each row's cut of the group's joined bodies must be its own.
    assert {rid: body for rid, _, body in rows} == expected


async def test_other_work_in_the_group_sees_the_pages_written_before_it(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    (connection_id,) = await _connections(sessionmaker, 1)
    writer = GroupWriter(sessionmaker)
    now = utcnow()

    page_unit = _page_of_a(connection_id, now)

    async def reader(session: AsyncSession) -> set[str]:
        return await resource_repo.live_resource_ids(session, connection_id, "Observation")

    written = writer.submit_batched(page_unit, record_of=connection_id)
    seen = writer.submit(reader)
    await written

    assert await seen == {"a"}
    assert writer.groups == 1


async def test_work_beside_the_pages_runs_in_the_group_without_flushing_them_first(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    (connection_id,) = await _connections(sessionmaker, 1)
    writer = GroupWriter(sessionmaker)

    async def reader(session: AsyncSession) -> set[str]:
        return await resource_repo.live_resource_ids(session, connection_id, "Observation")

    written = writer.submit_batched(_page_of_a(connection_id, utcnow()), record_of=connection_id)
    beside = writer.submit(reader, beside_pages=True)
    after = writer.submit(reader)
    await written

    # The page is still in the batch for the unit beside it, and written for the one after.
    assert await beside == set()
    assert await after == {"a"}
    assert writer.groups == 1


async def test_a_failing_page_fails_alone_and_the_others_are_written(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    first, second = await _connections(sessionmaker, 2)
    writer = GroupWriter(sessionmaker)
    now = utcnow()

    async def good(session: AsyncSession, batch: PageBatch) -> Counts:
        return await store_page(session, first, _page(_observation("a", 1)), now=now, batch=batch)

    async def bad(session: AsyncSession, batch: PageBatch) -> Counts:
        # A connection that does not exist: its rows break the group's flush (foreign key).
        return await store_page(
            session, "no-such-connection", _page(_observation("b", 1)), now=now, batch=batch
        )

    async def also_good(session: AsyncSession, batch: PageBatch) -> Counts:
        return await store_page(session, second, _page(_observation("c", 1)), now=now, batch=batch)

    results = await asyncio.gather(
        writer.submit_batched(good, record_of=first),
        writer.submit_batched(bad, record_of=first),
        writer.submit_batched(also_good, record_of=second),
        return_exceptions=True,
    )

    assert isinstance(results[0], Counts)
    assert isinstance(results[1], Exception)
    assert isinstance(results[2], Counts)
    assert [rid for rid, _, _ in await _rows(sessionmaker, first)] == ["a"]
    assert [rid for rid, _, _ in await _rows(sessionmaker, second)] == ["c"]


async def test_reserving_seqs_for_several_connections_at_once_continues_each_cursor(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    first, second = await _connections(sessionmaker, 2)
    async with sessionmaker.begin() as session:
        assert await resource_writes.reserve_seqs(session, first, 5) == 1
        firsts = await resource_writes.reserve_seqs_many(session, {first: 3, second: 2})
        again = await resource_writes.reserve_seqs_many(session, {second: 1, first: 1})

    assert firsts == {first: 6, second: 1}
    assert again == {first: 9, second: 3}


def test_a_batch_keeps_the_latest_row_of_a_resource_last() -> None:
    batch = PageBatch()
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for rid, digest in (("a", "1"), ("b", "1"), ("a", "2")):
        batch.add("c", "Observation", rid, _pending(digest, at))

    stored = batch.overlay("c", "Observation", ["a", "b", "z"], {})

    assert len(batch) == 2
    assert {rid: v.content_hash for rid, v in stored.items()} == {"a": "2", "b": "1"}
    assert batch.holds_any("c", "Observation", ["z", "a"])
    assert not batch.holds_any("c", "Condition", ["a"])


def _pending(digest: str, at: dt.datetime) -> PendingRow:
    return PendingRow(None, None, b"{}", digest, at, None, None)


async def test_a_rolled_back_page_leaves_no_row_and_no_seq(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    (connection_id,) = await _connections(sessionmaker, 1)

    async def write_then_fail() -> None:
        # The page's statements are the transaction's first: they must still be inside it.
        async with sessionmaker.begin() as session:
            await store_page(session, connection_id, _page(_observation("a", 1)), now=utcnow())
            raise RuntimeError

    with pytest.raises(RuntimeError):
        await write_then_fail()

    assert await _rows(sessionmaker, connection_id) == []
    async with sessionmaker() as session:
        assert await resource_writes.reserve_seqs(session, connection_id, 1) == 1


async def test_a_group_retried_after_another_unit_failed_counts_its_pages_again(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    (connection_id,) = await _connections(sessionmaker, 1)
    writer = GroupWriter(sessionmaker)
    now = utcnow()

    page_unit = _page_of_a(connection_id, now)

    async def failing(session: AsyncSession) -> None:
        raise RuntimeError

    written = writer.submit_batched(page_unit, record_of=connection_id)
    failed = writer.submit(failing)
    counts = await written
    with pytest.raises(RuntimeError):
        await failed

    # The page was flushed before the failing unit, then rolled back with its group: written
    # again alone, it is new (not unchanged against a row that leaked out of the group).
    assert (counts.new, counts.unchanged) == (1, 0)
    assert [(rid, seq) for rid, seq, _ in await _rows(sessionmaker, connection_id)] == [("a", 1)]


async def test_a_batch_over_one_statements_size_is_written_in_parts_in_order(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    first, second = await _connections(sessionmaker, 2)
    now = utcnow()
    async with sessionmaker.begin() as session:
        await store_page(session, first, _page(_observation("a", 1)), now=now)
    async with sessionmaker.begin() as session:
        batch = PageBatch(statement_bytes=1)  # every row a statement of its own
        pages = [
            (first, _page(_observation("a", 2), _observation("b", 1))),  # a changed, b new
            (second, _page(_observation("x", 1))),
            (first, _page(_observation("c", 1))),
        ]
        for cid, page in pages:
            await store_page(session, cid, page, now=now, batch=batch)
        await batch.flush(session)

    rows = await _rows(sessionmaker, first)
    assert [(rid, seq) for rid, seq, _ in rows] == [("a", 2), ("b", 3), ("c", 4)]
    assert rows[0][2] == pages[0][1].items[0].body
    assert [(rid, seq) for rid, seq, _ in await _rows(sessionmaker, second)] == [("x", 1)]


async def test_each_connection_keeps_one_writer_and_postgres_spreads_them_over_lanes(
    sessionmaker: async_sessionmaker[AsyncSession], db_backend: str
) -> None:
    ids = [f"connection-{index}" for index in range(64)]
    lanes = GroupWriters(sessionmaker, lanes=4)
    writers = [lanes.of(cid) for cid in ids]

    assert [lanes.of(cid) for cid in ids] == writers
    distinct = {id(writer) for writer in writers}
    if db_backend == "sqlite":
        # One writing transaction at a time: more writers would only wait on the lock.
        assert len(distinct) == 1
        assert write_lanes(sessionmaker, 4) == 1
    else:
        assert len(distinct) == 4
        assert write_lanes(sessionmaker, None) == POSTGRES_LANES


async def test_a_group_held_open_holds_up_only_the_connections_of_its_own_lane(
    sessionmaker: async_sessionmaker[AsyncSession], db_backend: str
) -> None:
    # Random ids: 24 of them all landing on one of two lanes has odds of 1 in 8 million.
    connections = await _connections(sessionmaker, 24)
    writers = GroupWriters(sessionmaker, lanes=2)
    lanes: dict[int, str] = {}
    for cid in connections:
        lanes.setdefault(id(writers.of(cid)), cid)
    # SQLite has one writer whatever is asked: every connection shares it.
    assert len(lanes) == (1 if db_backend == "sqlite" else 2)
    held = connections[0]
    free = next(cid for cid in lanes.values() if cid != held) if len(lanes) == 2 else connections[1]
    now = utcnow()
    release = asyncio.Event()

    async def slow(session: AsyncSession, batch: PageBatch) -> Counts:
        counts = await store_page(session, held, _page(_observation("a", 1)), now=now, batch=batch)
        await asyncio.wait_for(release.wait(), timeout=10)
        return counts

    stuck = writers.of(held).submit_batched(slow, record_of=held)
    other = writers.of(free).submit_batched(_page_of_a(free, now), record_of=free)

    if db_backend == "sqlite":
        # The other connection's page waits in the same writer, behind the open group.
        finished, _ = await asyncio.wait({other}, timeout=0.3)
        assert not finished
        assert await _rows(sessionmaker, free) == []
    else:
        # The other lane commits while the first lane's transaction is still open.
        assert (await asyncio.wait_for(other, timeout=10)).new == 1
        assert [rid for rid, _, _ in await _rows(sessionmaker, free)] == ["a"]
    assert not stuck.done()
    assert await _rows(sessionmaker, held) == []
    release.set()
    assert (await asyncio.wait_for(stuck, timeout=10)).new == 1
    assert (await asyncio.wait_for(other, timeout=10)).new == 1
    assert [rid for rid, _, _ in await _rows(sessionmaker, held)] == ["a"]
    assert [rid for rid, _, _ in await _rows(sessionmaker, free)] == ["a"]


async def test_pages_of_many_connections_through_lanes_keep_each_connections_order(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    connections = await _connections(sessionmaker, 6)
    now = utcnow()

    def unit(cid: str, number: int) -> Any:
        async def write(session: AsyncSession, batch: PageBatch) -> Counts:
            page = _page(*(_observation(f"r{number}-{i}", 1) for i in range(3)))
            return await store_page(session, cid, page, now=now, batch=batch)

        return write

    writers = GroupWriters(sessionmaker, lanes=3)
    futures = [
        writers.of(cid).submit_batched(unit(cid, number), record_of=cid)
        for number in range(5)
        for cid in connections
    ]
    results = await asyncio.wait_for(asyncio.gather(*futures), timeout=30)

    assert sum(counts.new for counts in results) == 6 * 5 * 3
    for cid in connections:
        rows = await _rows(sessionmaker, cid)
        assert [seq for _, seq, _ in rows] == list(range(1, 16))
        assert [rid for rid, _, _ in rows] == [f"r{n}-{i}" for n in range(5) for i in range(3)]


async def test_a_disconnected_connections_units_are_refused_and_the_groups_others_written(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    gone, kept = await _connections(sessionmaker, 2)
    async with sessionmaker.begin() as session:
        await session.execute(
            update(Connection).where(Connection.id == gone).values(status="revoked")
        )
    writer = GroupWriter(sessionmaker)
    now = utcnow()
    ran: list[str] = []

    async def direct_write(session: AsyncSession) -> Counts:
        # A unit that writes the record itself, not through the group's batch.
        return await store_page(session, gone, _page(_observation("b", 1)), now=now)

    async def beside(session: AsyncSession) -> None:
        ran.append("beside")

    results = await asyncio.gather(
        writer.submit_batched(_page_of_a(gone, now), record_of=gone),
        writer.submit_batched(_page_of_a(kept, now), record_of=kept),
        writer.submit(direct_write, record_of=gone),
        # Closing a run or releasing a lease names no record: it runs whatever the status.
        writer.submit(beside, beside_pages=True),
        return_exceptions=True,
    )

    # Rolled back once, then committed without the disconnected record's units.
    assert writer.groups == 1
    assert isinstance(results[0], Transient)
    assert results[0].reason == "disconnected"
    assert isinstance(results[1], Counts)
    assert results[1].new == 1
    assert isinstance(results[2], Transient)
    assert results[2].reason == "disconnected"
    assert results[3] is None
    assert ran == ["beside", "beside"]  # a unit runs again when its group does
    assert await _rows(sessionmaker, gone) == []
    assert [rid for rid, _, _ in await _rows(sessionmaker, kept)] == ["a"]


async def _disconnect_and_erase(sessionmaker: async_sessionmaker[AsyncSession], cid: str) -> int:
    """What a disconnect does first: lock the connection, mark it, erase its record."""
    async with sessionmaker.begin() as session:
        row = await repo.get_connection(session, cid, lock=True)
        assert row is not None
        row.status = "revoked"
        await session.flush()
        return await disconnect_repo.erase_synced_data(session, cid)


async def test_an_erase_after_a_groups_write_waits_for_it_and_erases_that_page_too(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    (cid,) = await _connections(sessionmaker, 1)
    writer = GroupWriter(sessionmaker)
    now = utcnow()
    in_group, release = asyncio.Event(), asyncio.Event()

    async def slow(session: AsyncSession, batch: PageBatch) -> Counts:
        counts = await store_page(session, cid, _page(_observation("a", 1)), now=now, batch=batch)
        await batch.flush(session)
        in_group.set()
        await asyncio.wait_for(release.wait(), timeout=10)
        return counts

    stored = writer.submit_batched(slow, record_of=cid)
    await asyncio.wait_for(in_group.wait(), timeout=10)
    erasing = asyncio.create_task(_disconnect_and_erase(sessionmaker, cid))
    finished, _ = await asyncio.wait({erasing}, timeout=0.3)
    assert not finished  # held off by the locks of the group's write
    release.set()
    assert (await asyncio.wait_for(stored, timeout=10)).new == 1
    # The erase ran after the group's commit, so it erased the group's page as well.
    assert await asyncio.wait_for(erasing, timeout=15) == 1
    assert await _rows(sessionmaker, cid) == []


async def test_a_page_written_after_an_erase_in_the_same_group_is_rolled_back_and_refused(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    gone, kept = await _connections(sessionmaker, 2)
    writer = GroupWriter(sessionmaker)
    now = utcnow()
    in_group, release = asyncio.Event(), asyncio.Event()

    async def slow(session: AsyncSession, batch: PageBatch) -> Counts:
        # Its group has begun and written nothing yet when the erase commits.
        in_group.set()
        await asyncio.wait_for(release.wait(), timeout=10)
        return await store_page(session, gone, _page(_observation("a", 1)), now=now, batch=batch)

    stored = writer.submit_batched(slow, record_of=gone)
    other = writer.submit_batched(_page_of_a(kept, now), record_of=kept)
    await asyncio.wait_for(in_group.wait(), timeout=10)
    assert await asyncio.wait_for(_disconnect_and_erase(sessionmaker, gone), timeout=15) == 0
    release.set()

    results = await asyncio.gather(stored, other, return_exceptions=True)
    assert isinstance(results[0], Transient)
    assert results[0].reason == "disconnected"
    # The group is written again without the disconnected record's unit.
    assert isinstance(results[1], Counts)
    assert results[1].new == 1
    assert await _rows(sessionmaker, gone) == []
    assert [rid for rid, _, _ in await _rows(sessionmaker, kept)] == ["a"]
