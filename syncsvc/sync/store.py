"""Storing one page of pulled resources: guard, canonicalise, compare, write.

Work is split so the transaction stays short: :func:`syncsvc.sync.prepare.prepare_page` does the
CPU part outside any transaction (compartment guard, canonical bytes and their hash, computed once
per resource), and :func:`store_page` runs inside the caller's transaction with a fixed number of
statements per page.
An unchanged resource (same hash) is not rewritten and keeps its ``seq``; a changed one has its
previous version copied to history first.

:class:`GroupWriter` commits every unit of work that is waiting in one transaction (group commit):
pulls hand it their units, so they never queue on the database's lock (SQLite's busy handler
sleeps; PostgreSQL flushes its WAL per commit), and a pull can fetch its next page while its last
one is being written. A process has one writer per lane (:func:`group_writer`), and a connection's
units always go through the same one: one on SQLite; on PostgreSQL several, so the database runs
one lane's statement while the event loop builds the next lane's group.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import weakref
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db import resource_repo
from syncsvc.sync.page_batch import PageBatch, PendingRow
from syncsvc.sync.prepare import ENTERED_IN_ERROR, Prepared, PreparedPage
from syncsvc.work_metrics import WRITE_BUCKETS, LatencyStats

VANISHED = "vanished"
#: Rejected resources named in a run's report at most (the count is always complete).
REJECTED_SHOWN = 20
#: Units of work one group transaction takes at most (a bound on its size and duration).
GROUP_LIMIT = 64
#: Writer lanes per process on PostgreSQL unless ``SYNCSVC_WRITE_LANES`` says otherwise. With
#: one, the writer was busy through a whole first sync, about 40% of it waiting on the database;
#: two made a first sync 6-9% faster on 2 cores, and three or four did no better there.
POSTGRES_LANES = 2

T = TypeVar("T")


@dataclass
class Counts:
    """What happened to the resources of a page, a type or a run."""

    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    rejected: int = 0

    def add(self, other: Counts) -> None:
        """Add ``other`` into this."""
        self.new += other.new
        self.changed += other.changed
        self.unchanged += other.unchanged
        self.deleted += other.deleted
        self.rejected += other.rejected

    def as_dict(self) -> dict[str, int]:
        """The counts by name."""
        return {
            "new": self.new,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "deleted": self.deleted,
            "rejected": self.rejected,
        }

    def columns(self) -> dict[str, int]:
        """The counts as the ``*_count`` columns of ``sync_states`` and ``sync_runs``."""
        return {f"{name}_count": value for name, value in self.as_dict().items()}


async def store_page(
    session: AsyncSession,
    connection_id: str,
    page: PreparedPage,
    *,
    now: dt.datetime,
    stored_ids: set[str] | None = None,
    batch: PageBatch | None = None,
) -> Counts:
    """Write a prepared page in the caller's transaction; returns what happened to each resource.

    With ``batch`` the page's rows join the batch (written when it is flushed, in the same
    transaction); without, they are written now.

    ``stored_ids``, when given, is every id of this type the connection has stored: the type
    had nothing before this run and these are the ids this run stored so far (this adds the
    page's). Ids outside it need no lookup, which spares a first sync a query per page (and
    PostgreSQL a scan: before a fresh table has statistics its planner filters a connection's
    whole type for an id list). Pages are written in order, so the set is exact for each; a
    rolled-back write leaves ids in it that were not stored, which costs a lookup, never a miss.
    """
    counts = Counts(rejected=len(page.rejected))
    if not page.items:
        return counts
    resource_type = page.resource_type
    ids = [item.resource_id for item in page.items]
    if stored_ids is not None:
        ids = [rid for rid in ids if rid in stored_ids]
        stored_ids.update(item.resource_id for item in page.items)
    stored = (
        await resource_repo.stored_versions(session, connection_id, resource_type, ids)
        if ids
        else {}
    )
    if batch is not None and ids:
        stored = batch.overlay(connection_id, resource_type, ids, stored)
    writes: list[Prepared] = []
    replaced: list[str] = []
    for item in page.items:
        old = stored.get(item.resource_id)
        if old is None:
            writes.append(item)
            if item.entered_in_error:
                counts.deleted += 1
            else:
                counts.new += 1
            continue
        same = old.content_hash == item.content_hash
        if same and old.deleted_reason != VANISHED:
            counts.unchanged += 1
            continue
        # Changed, or back after having vanished: a new seq either way.
        writes.append(item)
        if not same:
            replaced.append(item.resource_id)
        if item.entered_in_error and old.deleted_reason != ENTERED_IN_ERROR:
            counts.deleted += 1
        else:
            counts.changed += 1
    if not writes:
        return counts
    if replaced:
        if batch is not None and batch.holds_any(connection_id, resource_type, replaced):
            # History gets the version being replaced; it must be in the table to be copied.
            await batch.flush(session)
        await resource_repo.copy_to_history(
            session, connection_id, resource_type, replaced, now=now
        )
    own = PageBatch() if batch is None else batch
    for item in writes:
        deleted = item.entered_in_error
        own.add(
            connection_id,
            resource_type,
            item.resource_id,
            PendingRow(
                item.version_id,
                item.last_updated,
                item.body,
                item.content_hash,
                now,
                now if deleted else None,
                ENTERED_IN_ERROR if deleted else None,
                # Neither the table nor the batch had it: inserted, not upserted.
                item.resource_id not in stored,
            ),
        )
    if batch is None:
        await own.flush(session)
    return counts


async def flag_vanished(
    session: AsyncSession,
    connection_id: str,
    resource_type: str,
    seen: set[str],
    *,
    now: dt.datetime,
) -> int:
    """After a complete full pull: flag stored resources the EHR no longer returned."""
    live = await resource_repo.live_resource_ids(session, connection_id, resource_type)
    gone = sorted(live - seen)
    return await resource_repo.flag_deleted(
        session, connection_id, resource_type, gone, reason=VANISHED, now=now
    )


@dataclass
class _Unit:
    work: Callable[..., Awaitable[Any]]
    done: asyncio.Future[Any]
    #: Called with the group's :class:`PageBatch` too; see :meth:`GroupWriter.submit_batched`.
    batched: bool = False
    #: Reads nothing the group's pages write, so the batch need not be flushed before it.
    beside_pages: bool = False


class GroupWriter:
    """Runs units of work one transaction at a time, each transaction taking all that wait.

    Units run in the order they were submitted, so a pull's pages are written in page order. A
    failing unit fails its group; the group is then retried unit by unit, so only the failing
    unit's submitter sees the error. Page writes share the group's :class:`PageBatch`, which is
    flushed before any other unit runs and before the commit, so every unit sees what the
    units before it wrote.
    """

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker
        self._waiting: list[_Unit] = []
        self._task: asyncio.Task[None] | None = None
        #: Transactions committed and units written, for benchmarks and logs.
        self.groups = 0
        self.units = 0
        #: Units in the transaction being written now (``depth`` adds those waiting).
        self._writing = 0
        #: Time of each group transaction, committed or not (read by ``/metrics``).
        self.stats = LatencyStats(WRITE_BUCKETS)

    @property
    def depth(self) -> int:
        """Units waiting for this writer or in its transaction now."""
        return len(self._waiting) + self._writing

    def submit(
        self, work: Callable[[AsyncSession], Awaitable[T]], *, beside_pages: bool = False
    ) -> asyncio.Future[T]:
        """Queue ``work`` (called with the group's session); its result arrives in the future.

        ``beside_pages`` says ``work`` reads no resource rows (closing a run, releasing a lease):
        the pages waiting in the group's batch are then not flushed before it, so such units
        between page writes do not split the group's rows into several small writes.
        """
        unit = _Unit(work, asyncio.get_running_loop().create_future(), beside_pages=beside_pages)
        return self._queue(unit)

    def submit_batched(
        self, work: Callable[[AsyncSession, PageBatch], Awaitable[T]]
    ) -> asyncio.Future[T]:
        """Queue a page write: ``work`` is called with the session and the group's batch."""
        return self._queue(_Unit(work, asyncio.get_running_loop().create_future(), batched=True))

    def _queue(self, unit: _Unit) -> asyncio.Future[Any]:
        self._waiting.append(unit)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="syncsvc-group-writer")
        return unit.done

    async def run(
        self, work: Callable[[AsyncSession], Awaitable[T]], *, beside_pages: bool = False
    ) -> T:
        """Submit ``work`` and wait for it to be committed (``beside_pages``: see ``submit``)."""
        return await self.submit(work, beside_pages=beside_pages)

    async def _drain(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting[:GROUP_LIMIT], self._waiting[GROUP_LIMIT:]
            try:
                results = await self._commit(group)
            except Exception as exc:
                if len(group) == 1:
                    _fail(group[0], exc)
                    continue
                for unit in group:
                    await _settle(unit, self._commit)
                continue
            for unit, result in zip(group, results, strict=True):
                if not unit.done.done():
                    unit.done.set_result(result)

    async def _commit(self, group: list[_Unit]) -> list[Any]:
        results: list[Any] = []
        started = time.perf_counter()
        self._writing = len(group)
        try:
            async with self._sessionmaker.begin() as session:
                batch = PageBatch()
                for unit in group:
                    if unit.batched:
                        results.append(await unit.work(session, batch))
                        continue
                    if not unit.beside_pages:
                        await batch.flush(session)
                    results.append(await unit.work(session))
                await batch.flush(session)
        finally:
            self._writing = 0
            self.stats.observe(time.perf_counter() - started)
        self.groups += 1
        self.units += len(group)
        return results


def _fail(unit: _Unit, exc: Exception) -> None:
    if not unit.done.done():
        unit.done.set_exception(exc)


async def _settle(unit: _Unit, commit: Callable[[list[_Unit]], Awaitable[list[Any]]]) -> None:
    """Run one unit alone, handing its result or its exception to its submitter."""
    try:
        (result,) = await commit([unit])
    except Exception as exc:
        _fail(unit, exc)
        return
    if not unit.done.done():
        unit.done.set_result(result)


_WRITERS: weakref.WeakKeyDictionary[async_sessionmaker[AsyncSession], list[GroupWriter]] = (
    weakref.WeakKeyDictionary()
)


def write_lanes(sessionmaker: async_sessionmaker[AsyncSession], asked: int | None = None) -> int:
    """How many writers a process has on ``sessionmaker``'s database (``asked``: the setting).

    SQLite gets one whatever is asked: it runs one writing transaction at a time, so a second
    writer would only wait on its lock, or fail when its transaction had read before the other
    committed.
    """
    bind = sessionmaker.kw.get("bind")
    if bind is None or bind.dialect.name == "sqlite":
        return 1
    return POSTGRES_LANES if asked is None else max(1, asked)


def writers_of(sessionmaker: async_sessionmaker[AsyncSession]) -> list[GroupWriter]:
    """The group writers made so far on ``sessionmaker``'s database (none before a first write)."""
    return list(_WRITERS.get(sessionmaker, ()))


def group_writer(
    sessionmaker: async_sessionmaker[AsyncSession], connection_id: str, *, lanes: int | None = None
) -> GroupWriter:
    """The writer of ``connection_id``'s units on ``sessionmaker``'s database (made on first use).

    The same connection always gets the same writer, so its units are written in the order
    they were submitted; ``lanes`` is the setting (see :func:`write_lanes`), read on first use
    only: a count that changed later would move connections between writers. Writers are kept
    by session factory (one per engine), so every pull of a process shares them without a
    process-wide variable anyone must set up; they go when the factory goes.
    """
    writers = _WRITERS.get(sessionmaker)
    if writers is None:
        count = write_lanes(sessionmaker, lanes)
        writers = _WRITERS[sessionmaker] = [GroupWriter(sessionmaker) for _ in range(count)]
    # A stable hash (not hash(), which is salted per process) spreads connections evenly.
    return writers[zlib.crc32(connection_id.encode()) % len(writers)]
