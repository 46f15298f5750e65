"""Decoding search pages (parse, guard, canonicalise) in this process or in worker processes.

Decoding is most of the CPU a pull spends: JSON parsing, the compartment guard, and the
canonical bytes with their SHA-256, for every resource. In the event loop's thread it competes
with the HTTP client and the group writer for one core (the GIL), so a process with spare cores
hands it to worker processes: the body goes out as bytes and comes back as prepared rows, which
cross the pipe cheaply. Small pages are decoded in place, where the trip costs more than it saves.

Workers are spawned (not forked: nothing of the event loop, the database pool or the sockets is
inherited), ignore SIGINT and SIGTERM (the parent stops them, and they exit when it dies), and a
worker that dies takes only the pages it held: they fail as transient and the pool is replaced.
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

from syncsvc.errors import Transient
from syncsvc.fhir.client import parse_bundle
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
    page = parse_bundle(url, body)
    prepared = prepare_page(page.resources, resource_type, patient_id, base)
    return DecodedPage(page.url, page.next_url, page.self_url, prepared)


def _start_worker(announce: Queue[int]) -> None:
    # The parent decides when workers stop; a Ctrl-C or a service manager's SIGTERM to the
    # process group must not kill a page half-decoded while the parent drains its work.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
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


def auto_workers(cpu_count: int | None) -> int:
    """Workers for ``cpu_count`` cores (None: unknown): one core is left to the event loop."""
    return max(0, min(MAX_AUTO_WORKERS, (cpu_count or 1) - 1))


@dataclass
class PageDecoder:
    """Decodes pages in place, or in ``workers`` worker processes once :meth:`start` has run."""

    workers: int = 0
    inline_below: int = INLINE_BELOW_BYTES
    _pool: ProcessPoolExecutor | None = field(default=None, init=False, repr=False)
    _pids: list[int] = field(default_factory=list, init=False, repr=False)
    #: Where workers announce their process ids as they start (None until a pool exists).
    _announced: Queue[int] | None = field(default=None, init=False, repr=False)

    async def start(self) -> None:
        """Spawn the workers (when there are any) and wait until each has started."""
        if self.workers <= 0 or self._pool is not None:
            return
        self._pool, announced = self._new_pool()
        loop = asyncio.get_running_loop()
        # As many calls as workers spawn them all now, so no page waits for a process to start.
        await asyncio.gather(
            *(loop.run_in_executor(self._pool, os.getpid) for _ in range(self.workers))
        )

        def started() -> list[int]:
            return [announced.get(timeout=START_SECONDS) for _ in range(self.workers)]

        self._pids.extend(await asyncio.to_thread(started))

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
        """The decoded page; raises Transient (malformed page, or a worker that died)."""
        pool = self._pool
        if pool is None or len(body) < self.inline_below:
            return decode_page(url, body, resource_type, patient_id, base)
        loop = asyncio.get_running_loop()
        try:
            decoded = await loop.run_in_executor(
                pool, decode_page, url, body, resource_type, patient_id, base
            )
        except BrokenProcessPool as exc:
            self._replace(pool)
            raise Transient("A page decoder process stopped unexpectedly; retrying later") from exc
        return decoded

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        # Every page the broken pool held fails at once: only the first failure replaces it.
        if self._pool is not broken:
            return
        log.warning("page_decoder_replaced", workers=self.workers)
        broken.shutdown(wait=False, cancel_futures=True)
        self._pool, _ = self._new_pool()

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the workers started so far (those of a replaced pool included)."""
        announced = self._announced
        with contextlib.suppress(queue.Empty):
            while announced is not None:
                self._pids.append(announced.get_nowait())
        return list(self._pids)

    async def close(self) -> None:
        """Stop the workers: pages being decoded are finished, queued ones are cancelled."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)


@contextlib.asynccontextmanager
async def page_decoder(workers: int | None) -> AsyncIterator[PageDecoder]:
    """A started decoder with ``workers`` worker processes (None: :func:`auto_workers` of the host).

    Stopped on the way out.
    """
    decoder = PageDecoder(auto_workers(os.cpu_count()) if workers is None else workers)
    await decoder.start()
    try:
        yield decoder
    finally:
        await decoder.close()
