"""The page pipeline as a pull sees it: :class:`PageSink` per process, :class:`TypePages` per type.

A pull hands each page of a type to its :class:`TypePages` and runs its own bookkeeping (a run
record, a type's sync state) through :meth:`PageSink.run`, in order with the connection's pages.
How pages are decoded (in place or in worker processes, :mod:`syncsvc.sync.pipeline.decode`),
guarded and canonicalised (:mod:`syncsvc.sync.pipeline.prepare`) and written (group commit and
per-dialect statements: :mod:`syncsvc.sync.pipeline.writer`, :mod:`syncsvc.sync.pipeline.store`,
:mod:`syncsvc.sync.pipeline.batch`) stays behind these two classes.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db import resource_repo
from syncsvc.sync.pipeline.batch import PageBatch
from syncsvc.sync.pipeline.decode import DecodedPage, PageDecoder
from syncsvc.sync.pipeline.prepare import PreparedPage, prepare_page
from syncsvc.sync.pipeline.store import REJECTED_SHOWN, Counts, flag_vanished, store_page
from syncsvc.sync.pipeline.writer import GroupWriter, GroupWriters
from syncsvc.work_metrics import LatencyStats

T = TypeVar("T")

#: Pages of one type's pull waiting for the writer at most (a connection pulls a few types at
#: once): enough to keep the event loop's thread busy preparing pages while the database
#: writes, few enough to bound a pull's memory.
PAGES_IN_FLIGHT = 6


class PageSink:
    """Where a process's pulls put their pages: the page decoder and the group writers."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        decoder: PageDecoder,
        writers: GroupWriters,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self._sessionmaker = sessionmaker
        self._decoder = decoder
        self._writers = writers
        self._clock = clock

    async def open(
        self,
        connection_id: str,
        resource_type: str,
        *,
        patient_id: str,
        base: str,
        max_entries: int | None,
        counts: Counts,
        rejected: list[str],
        meter: Callable[[Counts], None],
        synced_before: bool = False,
    ) -> TypePages:
        """A sink for one type's pages of one pull of ``patient_id``'s record at ``base``.

        ``counts`` and ``rejected`` are added to as pages are committed, and ``meter`` hears
        each page's counts then (once per page, never per resource). ``synced_before``: the
        type's state shows an earlier success, so resources of it may be stored; the lookup
        that would tell a first pull is skipped (an incremental sync's every type has one).
        """
        first_time = False
        if not synced_before:
            async with self._sessionmaker() as session:
                first_time = not await resource_repo.has_resources(
                    session, connection_id, resource_type
                )
        return TypePages(
            self._writers.of(connection_id),
            self._decoder,
            self._clock,
            connection_id,
            resource_type,
            patient_id=patient_id,
            base=base,
            max_entries=max_entries,
            first_time=first_time,
            counts=counts,
            rejected=rejected,
            meter=meter,
        )

    def run(
        self,
        connection_id: str,
        work: Callable[[AsyncSession], Awaitable[T]],
        *,
        beside_pages: bool = False,
    ) -> Awaitable[T]:
        """Run ``work`` in a transaction after the pages this connection has put so far.

        ``beside_pages`` says ``work`` reads no resource rows (opening or closing a run,
        releasing a lease), so the pages waiting to be written need not be written before it.
        Any other ``work`` writes the connection's record (states, references, attachments),
        so it does not run once the connection is disconnected: it raises ``Transient`` then.
        """
        writer = self._writers.of(connection_id)
        record_of = None if beside_pages else connection_id
        return writer.run(work, beside_pages=beside_pages, record_of=record_of)

    @property
    def decoding(self) -> int:
        """Pages handed to page-decoding processes and not yet back."""
        return self._decoder.in_flight

    @property
    def writing(self) -> int:
        """Units waiting for the writers or in their transactions now."""
        return sum(writer.depth for writer in self._writers)

    def writes(self) -> list[LatencyStats]:
        """The time of each writer's group transactions."""
        return [writer.stats for writer in self._writers]


class TypePages:
    """One type's pages of one pull: decoded, then written in page order.

    Pages are pipelined: while the group writer commits earlier pages, the next are fetched and
    prepared. At most :data:`PAGES_IN_FLIGHT` pages wait for the writer; they are settled oldest
    first, so :attr:`seen` holds the ids of settled pages.
    """

    def __init__(
        self,
        writer: GroupWriter,
        decoder: PageDecoder,
        clock: Callable[[], dt.datetime],
        connection_id: str,
        resource_type: str,
        *,
        patient_id: str,
        base: str,
        max_entries: int | None,
        first_time: bool,
        counts: Counts,
        rejected: list[str],
        meter: Callable[[Counts], None],
    ) -> None:
        self._writer = writer
        self._decoder = decoder
        self._clock = clock
        self.connection_id = connection_id
        self.resource_type = resource_type
        self._patient_id = patient_id
        self._base = base
        self._max_entries = max_entries
        #: Whether the connection had nothing of this type stored before.
        self.first_time = first_time
        self.counts = counts
        self.rejected = rejected
        self._meter = meter
        #: Ids of the resources in the pages settled so far.
        self.seen: set[str] = set()
        #: The newest ``meta.lastUpdated`` of those pages.
        self.newest: dt.datetime | None = None
        # Kept by the writer itself (it writes pages in order), so it is exact for every page.
        self._stored_ids: set[str] | None = set() if first_time else None
        self._in_flight: collections.deque[tuple[asyncio.Future[Counts], PreparedPage]] = (
            collections.deque()
        )

    def decode(self, url: str, body: bytes) -> Awaitable[DecodedPage]:
        """Decode a fetched search page of this type (raises Transient, PageTooLarge)."""
        return self._decoder.decode(
            url,
            body,
            self.resource_type,
            self._patient_id,
            self._base,
            max_entries=self._max_entries,
        )

    async def put_resources(self, resources: Sequence[dict[str, Any]]) -> None:
        """Put resources read one by one (the Patient) as a page of their own."""
        await self.put(prepare_page(resources, self.resource_type, self._patient_id, self._base))

    async def put(self, page: PreparedPage) -> None:
        """Queue a decoded page for writing; waits while too many pages wait for the writer."""
        while len(self._in_flight) >= PAGES_IN_FLIGHT:
            await self._settle_oldest()
        if not page.items:
            # Nothing to store (an incremental search that found nothing new, say): no unit,
            # so no group transaction and no check of the record for it.
            nothing: asyncio.Future[Counts] = asyncio.get_running_loop().create_future()
            nothing.set_result(Counts(rejected=len(page.rejected)))
            self._in_flight.append((nothing, page))
            return
        now = self._clock()
        connection_id, stored_ids = self.connection_id, self._stored_ids

        def write(session: AsyncSession, batch: PageBatch) -> Awaitable[Counts]:
            return store_page(
                session, connection_id, page, now=now, stored_ids=stored_ids, batch=batch
            )

        written = self._writer.submit_batched(write, record_of=connection_id)
        self._in_flight.append((written, page))

    async def drain(self) -> None:
        """Wait for every page put; raises the first failure once all are settled.

        Every page is awaited even after one failed, so none is left unretrieved.
        """
        failure: BaseException | None = None
        while self._in_flight:
            try:
                await self._settle_oldest()
            except Exception as exc:  # the first failure is raised once all are settled
                failure = failure or exc
        if failure is not None:
            raise failure

    async def flag_vanished(
        self,
        session: AsyncSession,
        *,
        now: dt.datetime,
        within: Callable[[bytes], bool] | None = None,
        live: set[str] | None = None,
    ) -> int:
        """After a complete full pull: flag stored resources of the type no page had (of
        those ``within`` admits, when given: see :func:`~.store.flag_vanished`)."""
        return await flag_vanished(
            session,
            self.connection_id,
            self.resource_type,
            self.seen,
            now=now,
            within=within,
            live=live,
        )

    async def _settle_oldest(self) -> None:
        written, page = self._in_flight.popleft()
        counts = await written
        self.counts.add(counts)
        self._meter(counts)  # committed now: counted once per page, never per resource
        if page.rejected:
            room = REJECTED_SHOWN - len(self.rejected)
            self.rejected.extend(page.rejected[: max(room, 0)])
        self.seen.update(item.resource_id for item in page.items)
        newest = self.newest
        if page.max_last_updated is not None and (newest is None or page.max_last_updated > newest):
            self.newest = page.max_last_updated
