"""Group commit: the writers that take every page write and run record of a process.

:class:`GroupWriter` commits every unit of work that is waiting in one transaction (group
commit): pulls hand it their units, so they never queue on the database's lock (SQLite's busy
handler sleeps; PostgreSQL flushes its WAL per commit), and a pull can fetch its next page while
its last one is being written. A process has one :class:`GroupWriters`, one writer per lane, and
a connection's units always go through the same one: one on SQLite; on PostgreSQL several, so the
database runs one lane's statement while the event loop builds the next lane's group.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db.record_guard import lock_open_records
from syncsvc.errors import Transient
from syncsvc.sync.pipeline.batch import PageBatch
from syncsvc.sync.pipeline.store import Counts
from syncsvc.work_metrics import WRITE_BUCKETS, LatencyStats

#: Units of work one group transaction takes at most (a bound on its size and duration).
GROUP_LIMIT = 64
#: Writer lanes per process on PostgreSQL unless ``SYNCSVC_WRITE_LANES`` says otherwise. With
#: one, the writer was busy through a whole first sync, about 40% of it waiting on the database;
#: two made a first sync 6-9% faster on 2 cores, and three or four did no better there.
POSTGRES_LANES = 2

T = TypeVar("T")


@dataclass
class _Unit:
    work: Callable[..., Awaitable[Any]]
    done: asyncio.Future[Any]
    #: Called with the group's :class:`PageBatch` too; see :meth:`GroupWriter.submit_batched`.
    batched: bool = False
    #: Reads nothing the group's pages write, so the batch need not be flushed before it.
    beside_pages: bool = False
    #: The connection whose record the unit writes: it runs only while that connection is not
    #: disconnected (see :mod:`syncsvc.db.record_guard`).
    record_of: str | None = None


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
        #: The session the groups are written in, one transaction each (see ``_commit``).
        self._session: AsyncSession | None = None

    @property
    def depth(self) -> int:
        """Units waiting for this writer or in its transaction now."""
        return len(self._waiting) + self._writing

    def submit(
        self,
        work: Callable[[AsyncSession], Awaitable[T]],
        *,
        beside_pages: bool = False,
        record_of: str | None = None,
    ) -> asyncio.Future[T]:
        """Queue ``work`` (called with the group's session); its result arrives in the future.

        ``beside_pages`` says ``work`` reads no resource rows (closing a run, releasing a lease):
        the pages waiting in the group's batch are then not flushed before it, so such units
        between page writes do not split the group's rows into several small writes.
        ``record_of``: the connection whose record ``work`` writes; once it is disconnected,
        ``work`` does not run and the future holds :func:`disconnected_meanwhile`.
        """
        unit = _Unit(
            work,
            asyncio.get_running_loop().create_future(),
            beside_pages=beside_pages,
            record_of=record_of,
        )
        return self._queue(unit)

    def submit_batched(
        self, work: Callable[[AsyncSession, PageBatch], Awaitable[T]], *, record_of: str
    ) -> asyncio.Future[T]:
        """Queue a page write of ``record_of``'s record: ``work`` is called with the session and
        the group's batch (and not at all once the connection is disconnected)."""
        future = asyncio.get_running_loop().create_future()
        return self._queue(_Unit(work, future, batched=True, record_of=record_of))

    def _queue(self, unit: _Unit) -> asyncio.Future[Any]:
        self._waiting.append(unit)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="syncsvc-group-writer")
        return unit.done

    async def run(
        self,
        work: Callable[[AsyncSession], Awaitable[T]],
        *,
        beside_pages: bool = False,
        record_of: str | None = None,
    ) -> T:
        """Submit ``work`` and wait for it to be committed (the keywords: see ``submit``)."""
        return await self.submit(work, beside_pages=beside_pages, record_of=record_of)

    async def drained(self) -> None:
        """Wait until the units submitted so far are written (or have failed)."""
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait({task})  # not cancelled with its waiter: others' units are in it

    async def close(self) -> None:
        """Wait until the units submitted so far are written; close the writer's session."""
        await self.drained()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _drain(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting[:GROUP_LIMIT], self._waiting[GROUP_LIMIT:]
            await self._write(group)

    async def _write(self, group: list[_Unit]) -> None:
        # Each pass that finds records disconnected drops their units: the loop is bounded.
        while group:
            try:
                results = await self._commit(group)
            except _Disconnected as gone:
                kept = []
                for unit in group:
                    if unit.record_of in gone.connection_ids:
                        _fail(unit, disconnected_meanwhile())
                    else:
                        kept.append(unit)
                group = kept
                continue
            except Exception as exc:
                if len(group) == 1:
                    _fail(group[0], exc)
                    return
                for unit in group:
                    await _settle(unit, self._commit)
                return
            for unit, result in zip(group, results, strict=True):
                if not unit.done.done():
                    unit.done.set_result(result)
            return

    async def _commit(self, group: list[_Unit]) -> list[Any]:
        results: list[Any] = []
        started = time.perf_counter()
        self._writing = len(group)
        # One session for every group, a transaction each: making and closing a session per
        # group cost more CPU than many of the groups' statements.
        session = self._session
        if session is None:
            session = self._session = self._sessionmaker()
        try:
            async with session.begin():
                batch = PageBatch()
                for unit in group:
                    if unit.batched:
                        results.append(await unit.work(session, batch))
                        continue
                    if not unit.beside_pages:
                        await batch.flush(session)
                    results.append(await unit.work(session))
                await batch.flush(session)
                # Last, once the group's writes hold their locks: a record disconnected before
                # then rolls the group back; a disconnect after waits for the commit and erases
                # what it wrote (syncsvc.db.record_guard).
                written = {
                    unit.record_of
                    for unit, result in zip(group, results, strict=True)
                    if unit.record_of is not None and _may_have_written(unit, result)
                }
                if written:
                    gone = written - await lock_open_records(session, written)
                    if gone:
                        raise _Disconnected(gone)
        except BaseException:
            # A failed group's session is dropped: the next group starts from a new one.
            self._session = None
            await session.close()
            raise
        finally:
            # What the group read is the units' now (detached, as a closed session leaves it),
            # never what a later group finds in the session instead of reading it again.
            session.expunge_all()
            self._writing = 0
            self.stats.observe(time.perf_counter() - started)
        self.groups += 1
        self.units += len(group)
        return results


def _may_have_written(unit: _Unit, result: Any) -> bool:
    """Whether a unit may have written its record (a page found all unchanged wrote nothing)."""
    if unit.batched and isinstance(result, Counts):
        return bool(result.new or result.changed or result.deleted)
    return True


class _Disconnected(Exception):
    """Records of a group were disconnected before it could commit; its writes are undone."""

    def __init__(self, connection_ids: set[str]) -> None:
        super().__init__("disconnected meanwhile")
        self.connection_ids = connection_ids


def disconnected_meanwhile() -> Transient:
    """What a write of a disconnected connection's record gets instead of being written."""
    # The disconnect may have erased the record: a pull still running must not store it again.
    return Transient(
        "The connection was disconnected while it synced; nothing more of it is stored.",
        reason="disconnected",
    )


def _fail(unit: _Unit, exc: Exception) -> None:
    if not unit.done.done():
        unit.done.set_exception(exc)


async def _settle(unit: _Unit, commit: Callable[[list[_Unit]], Awaitable[list[Any]]]) -> None:
    """Run one unit alone, handing its result or its exception to its submitter."""
    try:
        (result,) = await commit([unit])
    except _Disconnected:
        _fail(unit, disconnected_meanwhile())
        return
    except Exception as exc:
        _fail(unit, exc)
        return
    if not unit.done.done():
        unit.done.set_result(result)


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


class GroupWriters:
    """A process's group writers on one database, one per lane (see :func:`write_lanes`).

    The same connection always gets the same writer (:meth:`of`), so its units are written in
    the order they were submitted. ``lanes`` is the setting; the count is fixed when the writers
    are made, since a count that changed later would move connections between writers. Whoever
    makes them closes them (:func:`group_writers`), after the pulls that use them have ended.
    """

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], *, lanes: int | None = None
    ) -> None:
        count = write_lanes(sessionmaker, lanes)
        self._writers = [GroupWriter(sessionmaker) for _ in range(count)]

    def of(self, connection_id: str) -> GroupWriter:
        """The writer of ``connection_id``'s units (the same one for all of them)."""
        # A stable hash (not hash(), which is salted per process) spreads connections evenly.
        return self._writers[zlib.crc32(connection_id.encode()) % len(self._writers)]

    def __iter__(self) -> Iterator[GroupWriter]:
        return iter(self._writers)

    def __len__(self) -> int:
        return len(self._writers)

    async def close(self) -> None:
        """Wait until every unit submitted so far is written (or has failed); close the writers'
        sessions."""
        for writer in self._writers:
            await writer.close()


@contextlib.asynccontextmanager
async def group_writers(
    sessionmaker: async_sessionmaker[AsyncSession], *, lanes: int | None = None
) -> AsyncIterator[GroupWriters]:
    """A process's group writers on ``sessionmaker``'s database, closed on the way out."""
    writers = GroupWriters(sessionmaker, lanes=lanes)
    try:
        yield writers
    finally:
        await writers.close()
