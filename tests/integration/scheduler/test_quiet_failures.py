"""A database lost under a running scheduler: one line when ticks start failing, one when they
recover (with the count), the tracebacks only at DEBUG.

The database is real PostgreSQL reached through a loopback forwarder the test takes down and
brings back on the same port, as a restarting server or a network cut would.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest
from sqlalchemy.engine import make_url

from syncsvc.db.engine import create_engine, create_sessionmaker
from syncsvc.http import create_http_client
from syncsvc.lifecycle.chores import outbox_chores
from syncsvc.settings import Settings
from syncsvc.sync.context import SyncContext
from syncsvc.sync.scheduler import SyncScheduler
from syncsvc.vault import Vault

from . import wait_until

FAILED_TICKS = 5


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres)])
def db_backend(request: pytest.FixtureRequest) -> str:
    """Only ``postgres`` here: the database is reached over TCP through the forwarder."""
    backend: str = request.param
    return backend


class Forwarder:
    """A loopback TCP forwarder to one server that can refuse connections for a while."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.port = 0

    async def up(self) -> None:
        """Accept and forward connections (on the same port as before, once it has one)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        """Refuse new connections and cut the open ones."""
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
            try:
                await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
            finally:
                up_writer.close()
        finally:
            writer.close()
            self._pipes.discard(task)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while chunk := await reader.read(65536):
        writer.write(chunk)
        await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()


@asynccontextmanager
async def forwarding(url: str) -> AsyncIterator[tuple[Forwarder, str]]:
    """A forwarder to the database at ``url`` and the URL that goes through it."""
    target = make_url(url)
    forwarder = Forwarder(target.host or "127.0.0.1", target.port or 5432)
    await forwarder.up()
    try:
        yield (
            forwarder,
            target.set(host="127.0.0.1", port=forwarder.port).render_as_string(hide_password=False),
        )
    finally:
        with contextlib.suppress(AssertionError):
            await forwarder.down()


def _events(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


async def test_a_lost_database_is_logged_when_ticks_start_failing_and_when_they_recover(
    db_url: str, settings: Settings, vault: Vault, captured_logs: io.StringIO
) -> None:
    async with forwarding(db_url) as (forwarder, url):
        fast = settings.replace(database_url=url, tick_seconds=0.05)
        engine = create_engine(url)
        async with create_http_client() as http:
            scheduler = SyncScheduler(
                SyncContext(fast, create_sessionmaker(engine), vault, http), chores=outbox_chores()
            )
            scheduler.start()
            try:

                async def ticked(count: int) -> bool:
                    return scheduler.ticks >= count

                await wait_until(lambda: ticked(2))
                await forwarder.down()
                # Ticks that start from here on fail (one in flight may still finish).
                enough = scheduler.ticks + FAILED_TICKS + 1
                await wait_until(lambda: ticked(enough))
                await forwarder.up()

                async def recovered() -> bool:
                    return "tick recovered" in captured_logs.getvalue()

                await wait_until(recovered)
            finally:
                await scheduler.stop()
                await engine.dispose()

    events = _events(captured_logs)
    failing = [e for e in events if e["event"] == "tick failing"]
    assert len(failing) == 1
    assert failing[0]["level"] == "error"
    # Refused, or cut in the middle of a query when the forwarder went down under it.
    problem = str(failing[0]["problem"])
    assert problem.startswith("database: "), problem
    assert "exception" not in failing[0]  # the traceback is a DEBUG line, not this one
    [recovery] = [e for e in events if e["event"] == "tick recovered"]
    failed_attempts = recovery["failed_attempts"]
    assert isinstance(failed_attempts, int)
    assert failed_attempts >= FAILED_TICKS
    # Each failed attempt left its traceback at DEBUG, and only there.
    details = [e for e in events if e["event"] == "tick failed"]
    assert len(details) == failed_attempts
    assert all(e["level"] == "debug" and "Traceback" in str(e["exception"]) for e in details)
