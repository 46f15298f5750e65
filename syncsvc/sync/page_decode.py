"""Decoding search pages (parse, guard, canonicalise) in this process or in worker processes.

Decoding is most of the CPU a pull spends: JSON parsing, the compartment guard, and the
canonical bytes with their SHA-256, for every resource. In the event loop's thread it competes
with the HTTP client and the group writer for one core (the GIL), so a process with spare cores
hands it to worker processes: the body goes out as bytes and comes back as prepared rows, which
cross the pipe cheaply. Small pages are decoded in place, where the trip costs more than it saves.

Workers are spawned (not forked: nothing of the event loop, the database pool or the sockets is
inherited), ignore SIGINT (a Ctrl-C reaches the whole process group; the parent stops them) and
exit when the parent dies. A worker that dies breaks the pool: every page it had in flight fails
as transient (the runs are retried later) and the pool is replaced, its survivors terminated.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import queue
import signal
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue

import structlog

from syncsvc.errors import SyncsvcError, Transient
from syncsvc.fhir.bundle import parse_bundle
from syncsvc.process import tune_gc
from syncsvc.sync.prepare import PreparedPage, prepare_page

log = structlog.get_logger(__name__)

#: Pages smaller than this are decoded in place: the trip to a worker costs more than it saves.
INLINE_BELOW_BYTES = 16 * 1024
#: How long a worker process may take to start (imports on a loaded machine).
START_SECONDS = 60.0
#: Worker processes the automatic setting uses at most.
MAX_AUTO_WORKERS = 4


@dataclass
class DecodedPage:
    """A searchset page, decoded: its links (for paging) and its prepared resources."""

    url: str
    next_url: str | None
    self_url: str | None
    prepared: PreparedPage


def decode_page(
    url: str, body: bytes, resource_type: str, patient_id: str, base: str | None
) -> DecodedPage:
    """Parse a searchset page and prepare its resources for ``patient_id`` at ``base``."""
    page = parse_bundle(body)
    prepared = prepare_page(page.resources, resource_type, patient_id, base)
    return DecodedPage(url, page.next_url, page.self_url, prepared)


def _start_worker(announce: Queue[int]) -> None:
    # A Ctrl-C reaches the whole process group: the parent decides when workers stop. SIGTERM
    # keeps its default, which is how the pool stops the survivors of a broken pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        # A worker also holds its task queue's write end, so a parent killed outright (SIGKILL,
        # the OOM killer) never shows it an end of file: it watches the parent's sentinel.
        threading.Thread(
            target=_exit_with_parent, args=(parent,), name="parent-watch", daemon=True
        ).start()
    tune_gc()
    announce.put(os.getpid())


def _exit_with_parent(parent: BaseProcess) -> None:
    parent.join()
    os._exit(0)


def usable_cpus() -> int | None:
    """CPUs this process may run on (its affinity, which container CPU sets narrow), if known."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count()


def auto_workers(cpu_count: int | None) -> int:
    """Workers for ``cpu_count`` cores (None: unknown): one core is left to the event loop."""
    return max(0, min(MAX_AUTO_WORKERS, (cpu_count or 1) - 1))


@dataclass
class PageDecoder:
    """Decodes pages in place, or in ``workers`` worker processes once :meth:`start` has run."""

    workers: int = 0
    inline_below: int = INLINE_BELOW_BYTES
    _pool: ProcessPoolExecutor | None = field(default=None, init=False, repr=False)
    #: Pages decoded by workers so far (the rest were decoded in place).
    worker_pages: int = field(default=0, init=False)
    _pids: list[int] = field(default_factory=list, init=False, repr=False)
    #: Where workers announce their process ids as they start (None until a pool exists).
    _announced: Queue[int] | None = field(default=None, init=False, repr=False)

    async def start(self) -> None:
        """Spawn the workers (when there are any) and wait until each has started.

        Raises SyncsvcError (workers stopped again) when they do not start in time.
        """
        if self.workers <= 0 or self._pool is not None:
            return
        self._pool, announced = self._new_pool()
        loop = asyncio.get_running_loop()

        def started() -> list[int]:
            return [announced.get(timeout=START_SECONDS) for _ in range(self.workers)]

        try:
            # As many calls as workers spawn them all now: no page waits for a process to start.
            await asyncio.gather(
                *(loop.run_in_executor(self._pool, os.getpid) for _ in range(self.workers))
            )
            self._pids.extend(await asyncio.to_thread(started))
        except (queue.Empty, BrokenProcessPool, OSError) as exc:
            await self.close()
            raise SyncsvcError(
                f"The page decoder's {self.workers} worker process(es) did not start "
                f"({type(exc).__name__}); set SYNCSVC_DECODE_WORKERS=0 to decode in place"
            ) from exc

    def _new_pool(self) -> tuple[ProcessPoolExecutor, Queue[int]]:
        context = get_context("spawn")
        self._announced = announced = context.Queue()
        pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=context,
            initializer=_start_worker,
            initargs=(announced,),
        )
        return pool, announced

    async def decode(
        self, url: str, body: bytes, resource_type: str, patient_id: str, base: str | None
    ) -> DecodedPage:
        """The decoded page; raises Transient (malformed page, or no worker could take it)."""
        pool = self._pool
        if pool is None or len(body) < self.inline_below:
            return decode_page(url, body, resource_type, patient_id, base)
        try:
            future = pool.submit(decode_page, url, body, resource_type, patient_id, base)
        except BrokenProcessPool as exc:
            raise self._broken(pool) from exc
        except (RuntimeError, OSError) as exc:
            # Submitting spawns a worker when one is missing (OSError when the system refuses),
            # and a pool closed since this page began refuses new work (RuntimeError).
            raise Transient(f"No page decoder process could take the page ({exc})") from exc
        try:
            decoded = await asyncio.wrap_future(future)
        except BrokenProcessPool as exc:
            raise self._broken(pool) from exc
        self.worker_pages += 1
        return decoded

    def _broken(self, broken: ProcessPoolExecutor) -> Transient:
        """Replace a broken pool (once, however many pages it failed); the error for a page."""
        if self._pool is broken:
            log.warning("page_decoder_replaced", workers=self.workers)
            # The pool terminates its surviving workers (SIGTERM) and its own thread reaps them;
            # waiting for that here would block the event loop.
            broken.shutdown(wait=False, cancel_futures=True)
            try:
                self._pool, _ = self._new_pool()
            except OSError:  # the system refuses pipes or semaphores now: decode in place
                log.warning("page_decoder_in_place", workers=self.workers)
                self._pool = None
        return Transient("A page decoder process stopped unexpectedly; retrying later")

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the workers started so far (those of a replaced pool included)."""
        announced = self._announced
        with contextlib.suppress(queue.Empty):
            while announced is not None:
                self._pids.append(announced.get_nowait())
        return list(self._pids)

    async def close(self) -> None:
        """Stop the workers once the pages handed to them are decoded (pages come later inline)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            # Queued pages are not cancelled: their pulls would see a CancelledError that nobody
            # asked for. Each takes milliseconds.
            await asyncio.to_thread(pool.shutdown, wait=True)


@contextlib.asynccontextmanager
async def page_decoder(workers: int | None) -> AsyncIterator[PageDecoder]:
    """A started decoder with ``workers`` worker processes (None: :func:`auto_workers`).

    Stopped on the way out.
    """
    decoder = PageDecoder(auto_workers(usable_cpus()) if workers is None else workers)
    try:
        await decoder.start()
        yield decoder
    finally:
        await decoder.close()
