"""Decoding search pages (parse, guard, canonicalise) in this process or in worker processes.

Decoding is most of the CPU a pull spends: JSON parsing, the compartment guard, and the
canonical bytes with their SHA-256, for every resource. In the event loop's thread it competes
with the HTTP client and the group writer for one core (the GIL), so a process with spare cores
hands it to worker processes: the body goes out as bytes and comes back as prepared rows, which
cross cheaply. Small pages are decoded in place, where the trip costs more than it saves.

Each worker is a spawned process (not forked: nothing of the event loop, the database pool or
the sockets is inherited) with a socket pair of its own, holding up to :data:`WORKER_DEPTH` pages
and decoding them in order. The event loop
writes pages and reads results itself, without helper threads, and a worker that dies closes
only its own socket. (``concurrent.futures``' process pool shares one result pipe and its lock
among workers: one killed while sending a result left the pool's reader waiting forever for
the rest of the message, and every later page with it.) A page whose worker dies, or does not
answer in :data:`PAGE_SECONDS`, fails as transient (its run is retried later), and the worker is
replaced in the background (pages meanwhile go to the others, or are decoded in place). Workers
ignore SIGINT (a Ctrl-C reaches the whole process group; the parent stops
them) and exit when their socket closes, which is also what the parent's death does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import pickle
import signal
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.process import BaseProcess
from typing import Any

import structlog

from syncsvc.errors import SyncsvcError, Transient
from syncsvc.fhir.bundle import parse_bundle
from syncsvc.process import tune_gc
from syncsvc.sync.pipeline.prepare import PreparedPage, prepare_page

log = structlog.get_logger(__name__)

#: Pages smaller than this are decoded in place: the trip to a worker costs more than it saves.
INLINE_BELOW_BYTES = 16 * 1024
#: How long a worker process may take to start (imports on a loaded machine).
START_SECONDS = 60.0
#: How long a worker may take over one page before it is taken for hung and replaced; pages of
#: megabytes decode in well under a second.
PAGE_SECONDS = 120.0
#: How long a closing worker gets to exit before it is killed.
STOP_SECONDS = 10.0
#: After a replacement failed to start, pages without a worker are decoded in place this long
#: before another is tried (a system refusing processes would otherwise be asked at every page).
RESPAWN_PAUSE_SECONDS = 30.0
#: Worker processes the automatic setting uses at most.
MAX_AUTO_WORKERS = 4
#: Pages a worker holds at once: the next one is there when it finishes one, so it does not
#: wait for a busy event loop to send more.
WORKER_DEPTH = 2
#: A frame on a worker's socket: its length (8 bytes, network order), then a pickle.
_LENGTH = struct.Struct("!Q")
_PROTOCOL = pickle.HIGHEST_PROTOCOL


@dataclass
class DecodedPage:
    """A searchset page, decoded: its links (for paging) and its prepared resources."""

    url: str
    next_url: str | None
    self_url: str | None
    prepared: PreparedPage


def decode_page(
    url: str,
    body: bytes,
    resource_type: str,
    patient_id: str,
    base: str | None,
    *,
    max_entries: int | None = None,
) -> DecodedPage:
    """Parse a searchset page and prepare its resources for ``patient_id`` at ``base``.

    Raises PageTooLarge when the page has more than ``max_entries`` entries.
    """
    page = parse_bundle(body, max_entries)
    prepared = prepare_page(page.resources, resource_type, patient_id, base)
    return DecodedPage(url, page.next_url, page.self_url, prepared)


def _serve(channel: socket.socket) -> None:
    """A worker process: say its pid, then decode each page it is sent until the socket closes."""
    # A Ctrl-C reaches the whole process group: the parent decides when workers stop. SIGTERM
    # keeps its default.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tune_gc()
    with channel, contextlib.suppress(OSError):  # the parent went away: nobody to answer
        _send_frame(channel, pickle.dumps(os.getpid()))
        while (request := _receive_frame(channel)) is not None:
            # From our own parent, over a socket pair nobody else holds.
            url, body, resource_type, patient_id, base, max_entries = pickle.loads(request)  # noqa: S301
            reply: tuple[bool, Any]
            try:
                reply = (
                    True,
                    decode_page(
                        url, body, resource_type, patient_id, base, max_entries=max_entries
                    ),
                )
            except Exception as exc:  # raised again on the parent's side, as in place
                reply = (False, exc)
            _send_frame(channel, pickle.dumps(reply, _PROTOCOL))


def _send_frame(channel: socket.socket, payload: bytes) -> None:
    channel.sendall(_LENGTH.pack(len(payload)))
    channel.sendall(payload)


def _receive_frame(channel: socket.socket) -> bytearray | None:
    """The next frame's payload; None once the socket is closed."""
    head = _receive_exactly(channel, _LENGTH.size)
    if head is None:
        return None
    return _receive_exactly(channel, _LENGTH.unpack(head)[0])


def _receive_exactly(channel: socket.socket, size: int) -> bytearray | None:
    buffer = bytearray(size)
    view = memoryview(buffer)
    filled = 0
    while filled < size:
        got = channel.recv_into(view[filled:])
        if not got:
            return None
        filled += got
    return buffer


def _transient(cause: BaseException) -> Transient:
    error = Transient(
        "A page decoder process stopped unexpectedly; retrying later", reason="decoder_failed"
    )
    error.__cause__ = cause
    return error


@dataclass(eq=False)
class _Worker:
    """One worker process, the parent's end of its socket, and the pages it was sent."""

    process: BaseProcess
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    pid: int = 0
    #: Futures of the pages sent and not yet answered, in the order they were sent.
    waiting: collections.deque[asyncio.Future[Any]] = field(default_factory=collections.deque)
    #: Why its socket broke (it takes no more pages), None while it works.
    failure: BaseException | None = None
    _answers: asyncio.Task[None] | None = None

    async def answer(self) -> Any:
        """The next frame from the worker, unpickled (EOFError once it has gone)."""
        (size,) = _LENGTH.unpack(await self.reader.readexactly(_LENGTH.size))
        return pickle.loads(await self.reader.readexactly(size))  # noqa: S301 - our own worker

    def listen(self) -> None:
        """Hand each answer to the page it belongs to, from now until the socket breaks."""
        self._answers = asyncio.create_task(self._hand_out(), name=f"page-decoder-{self.pid}")

    async def _hand_out(self) -> None:
        try:
            while True:
                answer = await self.answer()
                future = self.waiting.popleft()  # IndexError: an answer nobody asked for
                if not future.done():  # its page may have been cancelled meanwhile
                    future.set_result(answer)
        except Exception as exc:  # a closed socket, an answer nobody asked for, a bad pickle
            self.fail(exc)

    async def ask(self, payload: bytes) -> Any:
        """Send a page (the worker queues it behind the ones it has) and wait for its answer."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.writer.write(_LENGTH.pack(len(payload)))
        self.writer.write(payload)
        try:
            try:
                await self.writer.drain()
            except OSError as exc:
                self.fail(exc)
            return await future
        except asyncio.CancelledError:
            # It stays in line (its answer still comes), but nobody waits for it any more.
            future.cancel()
            raise

    def fail(self, cause: BaseException) -> None:
        """Give up on the worker: its pages fail as transient and the process is killed."""
        if self.failure is None:
            self.failure = cause
            log.warning("page_decoder_worker_failed", pid=self.pid, error=type(cause).__name__)
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(_transient(cause))
        if self._answers is not None and self._answers is not asyncio.current_task():
            self._answers.cancel()
        self.writer.transport.abort()
        if self.process.is_alive():
            self.process.kill()
        # Reaped by stop() (joining here would block the event loop).

    @property
    def working(self) -> bool:
        """Whether it takes pages: its socket is whole and its process runs (which reaps it)."""
        if self.failure is None and not self.process.is_alive():
            self.fail(EOFError("the worker process has exited"))
        return self.failure is None

    async def stop(self) -> None:
        """Close the socket (an idle worker exits on it); kill the process if it stays."""
        if self._answers is not None:
            self._answers.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._answers
        # Aborted, not closed: a worker still sending an answer nobody reads (its callers were
        # cancelled) would otherwise keep an unsent page waiting in the buffer, and both stall.
        self.writer.transport.abort()
        await asyncio.to_thread(self.process.join, STOP_SECONDS)
        if self.process.is_alive():
            self.process.kill()
            await asyncio.to_thread(self.process.join, STOP_SECONDS)


async def _spawn() -> _Worker:
    """Start a worker and wait for it to say its pid (raises TimeoutError, OSError, EOFError)."""
    ours, theirs = socket.socketpair()
    process = get_context("spawn").Process(
        target=_serve, args=(theirs,), name="syncsvc-page-decoder", daemon=True
    )
    try:
        process.start()
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    worker = _Worker(process, reader, writer)
    try:
        async with asyncio.timeout(START_SECONDS):
            worker.pid = await worker.answer()
    except BaseException as exc:
        worker.fail(exc)
        raise
    worker.listen()
    return worker


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
    #: Pages decoded by workers so far (the rest were decoded in place).
    worker_pages: int = field(default=0, init=False)
    _running: bool = field(default=False, init=False, repr=False)
    _pool: list[_Worker] = field(default_factory=list, init=False, repr=False)
    #: Pages in workers at once: WORKER_DEPTH each.
    _room: asyncio.Semaphore | None = field(default=None, init=False, repr=False)
    #: The background task replacing failed workers, while it runs.
    _refill: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    #: No replacement is tried before this time (loop clock) once one failed to start.
    _respawn_after: float = field(default=0.0, init=False, repr=False)
    _pids: list[int] = field(default_factory=list, init=False, repr=False)
    #: Pages handed to workers and not yet back (close waits for them).
    _in_flight: int = field(default=0, init=False, repr=False)
    _drained: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)

    async def start(self) -> None:
        """Spawn the workers (when there are any) and wait until each has started.

        Raises SyncsvcError (workers stopped again) when they do not start in time.
        """
        if self.workers <= 0 or self._running:
            return
        started = await asyncio.gather(
            *(_spawn() for _ in range(self.workers)), return_exceptions=True
        )
        self._pool = [worker for worker in started if isinstance(worker, _Worker)]
        self._pids.extend(worker.pid for worker in self._pool)
        self._room = asyncio.Semaphore(self.workers * WORKER_DEPTH)
        self._running = True
        failure = next((r for r in started if isinstance(r, BaseException)), None)
        if failure is not None:
            await self.close()
            if not isinstance(failure, Exception):
                raise failure
            raise SyncsvcError(
                f"The page decoder's {self.workers} worker process(es) did not start "
                f"({type(failure).__name__}); set SYNCSVC_DECODE_WORKERS=0 to decode in place"
            ) from failure

    async def decode(
        self,
        url: str,
        body: bytes,
        resource_type: str,
        patient_id: str,
        base: str | None,
        *,
        max_entries: int | None = None,
    ) -> DecodedPage:
        """The decoded page; raises Transient (malformed page, or its worker failed).

        Raises PageTooLarge for a page of more than ``max_entries`` entries (the byte cap was
        checked as the page was read: a worker never receives more than that).
        """
        room = self._room
        if not self._running or room is None or len(body) < self.inline_below:
            return decode_page(url, body, resource_type, patient_id, base, max_entries=max_entries)
        payload = pickle.dumps((url, body, resource_type, patient_id, base, max_entries), _PROTOCOL)
        self._in_flight += 1
        self._drained.clear()
        try:
            async with room:
                worker = await self._least_busy()
                if worker is None:  # no process can be started now: this page in place
                    return decode_page(
                        url, body, resource_type, patient_id, base, max_entries=max_entries
                    )
                try:
                    async with asyncio.timeout(PAGE_SECONDS):
                        ok, value = await worker.ask(payload)
                except TimeoutError as exc:  # hung: its other pages would wait as long
                    worker.fail(exc)
                    raise _transient(exc) from exc
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._drained.set()
        if not ok:
            raise value
        self.worker_pages += 1
        decoded: DecodedPage = value
        return decoded

    async def _least_busy(self) -> _Worker | None:
        """The working worker with the fewest pages; None when there is none to be had.

        Failed workers are replaced in the background; only when none works does a page wait
        for that (and is decoded in place if it fails).
        """
        working = [worker for worker in self._pool if worker.working]
        if (
            len(working) < len(self._pool)
            and self._refill is None
            and asyncio.get_running_loop().time() >= self._respawn_after
        ):
            self._refill = asyncio.create_task(self._replace_failed(), name="page-decoder")
        if not working and self._refill is not None:
            await asyncio.shield(self._refill)
            working = [worker for worker in self._pool if worker.working]
        return min(working, key=lambda worker: len(worker.waiting), default=None)

    async def _replace_failed(self) -> None:
        try:
            for index, worker in enumerate(self._pool):
                if worker.failure is None:
                    continue
                try:
                    replacement = await _spawn()
                except (OSError, EOFError, TimeoutError) as exc:
                    log.warning("page_decoder_in_place", error=type(exc).__name__)
                    loop = asyncio.get_running_loop()
                    self._respawn_after = loop.time() + RESPAWN_PAUSE_SECONDS
                    return
                self._pool[index] = replacement
                self._pids.append(replacement.pid)
                log.info("page_decoder_worker_replaced", pid=replacement.pid)
                await worker.stop()  # killed already: this reaps it
        finally:
            self._refill = None

    @property
    def in_flight(self) -> int:
        """Pages handed to worker processes and not yet back."""
        return self._in_flight

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the workers started so far (replaced ones included)."""
        return list(self._pids)

    async def close(self) -> None:
        """Stop the workers once the pages handed to them are decoded (pages come later inline)."""
        if not self._running:
            return
        self._running = False
        # Pages already handed over are not cancelled: their pulls would see a CancelledError
        # nobody asked for. Each takes milliseconds, and PAGE_SECONDS at most.
        if self._in_flight:
            await self._drained.wait()
        if self._refill is not None:
            self._refill.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refill
        pool, self._pool = self._pool, []
        await asyncio.gather(*(worker.stop() for worker in pool))


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
