"""The composition root: one :class:`Services` per process, built where the process starts.

``serve`` builds it before its application (``create_app(services)``) and opens it in the
application's ``cleanup_ctx``; ``worker``, ``sync --once`` and the commands that reach an EHR
open it with ``async with``. Everything below receives it, or the narrow view of it the sync
engine takes (:meth:`Services.sync_context`), and never assembles its own: one outbound HTTP
client, one vault, one page decoder, one set of group writers and one lease-owner id per process.

Start-up order is the dependency order (database, webhook client, EHR client, page decoder,
group writers, sync context, scheduler); closing runs it backwards, so the scheduler stops first
and the database goes last.
"""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import TypeVar

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from syncsvc.db.engine import create_engine, create_sessionmaker
from syncsvc.db.probe import require_newest_schema
from syncsvc.http import create_http_client, create_webhook_client
from syncsvc.lifecycle.chores import outbox_chores
from syncsvc.settings import SOCKETS_PER_CONNECTION, Settings
from syncsvc.sync.context import SyncContext, new_owner_id
from syncsvc.sync.limits import TenantLimiter
from syncsvc.sync.pipeline.decode import PageDecoder, page_decoder
from syncsvc.sync.pipeline.writer import GroupWriters, group_writers
from syncsvc.sync.scheduler import SyncScheduler
from syncsvc.vault import Vault
from syncsvc.work_metrics import WorkMetrics

T = TypeVar("T")


class Services:
    """The shared resources of one process, started and closed together.

    ``background`` builds the sync scheduler (:meth:`start_background` once the process is ready
    to claim work; :meth:`close` stops it first) and decodes pages in worker processes unless
    ``decode_in_workers`` says otherwise. ``require_schema`` makes :meth:`start` fail with
    DatabaseUnavailable unless the database answers at the newest schema (commands check;
    ``serve`` waits for it before building the application and reports it in ``/readyz``).
    ``limiter`` replaces the scheduler's per-tenant limits (the benchmark lifts them).
    Raises ConfigError at once when no vault key is configured.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        background: bool = False,
        decode_in_workers: bool | None = None,
        require_schema: bool = False,
        metrics: WorkMetrics | None = None,
        limiter: TenantLimiter | None = None,
    ) -> None:
        self.settings = settings
        self.vault = Vault.from_settings(settings)
        #: The lease owner id of this process: every lease it takes carries it.
        self.owner = new_owner_id()
        #: The process's work counters (a private registry unless the process serves metrics).
        self.metrics = metrics if metrics is not None else WorkMetrics()
        self.background = background
        self._decode_in_workers = background if decode_in_workers is None else decode_in_workers
        self._require_schema = require_schema
        self._limiter = limiter
        self._stack: contextlib.AsyncExitStack | None = None
        self._engine: AsyncEngine | None = None
        self._sessionmaker: async_sessionmaker[AsyncSession] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._webhook_http: aiohttp.ClientSession | None = None
        self._decoder: PageDecoder | None = None
        self._writers: GroupWriters | None = None
        self._sync: SyncContext | None = None
        self._scheduler: SyncScheduler | None = None
        self._scheduler_stopped = False

    async def start(self) -> None:
        """Open the database, the HTTP clients and the decoder, and build the sync context."""
        if self._stack is not None:
            raise RuntimeError("these services are started already")
        stack = contextlib.AsyncExitStack()
        try:
            await self._open(stack)
        except BaseException:
            await stack.aclose()
            self._forget()
            raise
        self._stack = stack

    async def _open(self, stack: contextlib.AsyncExitStack) -> None:
        settings = self.settings
        # The pool is sized to the connections this process works at once (db_pool_size).
        engine = create_engine(settings.database_url, pool_size=settings.db_pool_size)
        stack.push_async_callback(engine.dispose)
        if self._require_schema:
            await require_newest_schema(engine, settings.database_url)
        self._engine = engine
        self._sessionmaker = create_sessionmaker(engine)
        # Webhooks get a client (and connection pool) of their own: see create_webhook_client.
        self._webhook_http = await stack.enter_async_context(create_webhook_client())
        # The one EHR client of the process, its pool sized to the connections worked at once.
        self._http = await stack.enter_async_context(
            create_http_client(max_connections=settings.sync_concurrency * SOCKETS_PER_CONNECTION)
        )
        self._decoder = decoder = (
            await stack.enter_async_context(page_decoder(settings.decode_workers))
            if self._decode_in_workers
            else PageDecoder()
        )
        # Closed after the scheduler stops (so after the last pull), before the decoder.
        self._writers = writers = await stack.enter_async_context(
            group_writers(self._sessionmaker, lanes=settings.write_lanes)
        )
        self._sync = SyncContext(
            settings=settings,
            sessionmaker=self._sessionmaker,
            vault=self.vault,
            http=self._http,
            webhook_http=self._webhook_http,
            owner=self.owner,
            decoder=decoder,
            metrics=self.metrics,
            group_writers=writers,
        )
        if self.background:
            self._sync.publish_pipeline()
            self._scheduler = SyncScheduler(
                self._sync, chores=outbox_chores(), limiter=self._limiter
            )
            stack.push_async_callback(self.stop_background)

    def start_background(self) -> None:
        """Start the sync tick (when ``background``): call it once ready to claim work."""
        if self._scheduler is not None and not self._scheduler_stopped:
            self._scheduler.start()

    async def stop_background(self) -> None:
        """Stop the sync tick, letting the running one finish (once; :meth:`close` does it too)."""
        if self._scheduler is not None and not self._scheduler_stopped:
            self._scheduler_stopped = True
            await self._scheduler.stop()

    async def close(self) -> None:
        """Stop the scheduler, then close what :meth:`start` opened, in reverse order."""
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                await stack.aclose()
        finally:
            self._forget()

    def _forget(self) -> None:
        self._engine = self._sessionmaker = self._http = self._webhook_http = None
        self._decoder = self._writers = None
        self._sync = self._scheduler = None
        self._scheduler_stopped = False

    async def __aenter__(self) -> Services:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def engine(self) -> AsyncEngine:
        """The process's database engine."""
        return _started(self._engine)

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        """The session factory: ``async with sessionmaker.begin()`` per unit of work."""
        return _started(self._sessionmaker)

    @property
    def http(self) -> aiohttp.ClientSession:
        """The process's one outbound client for EHR traffic (DummyCookieJar, explicit timeouts)."""
        return _started(self._http)

    @property
    def webhook_http(self) -> aiohttp.ClientSession:
        """The webhook client: a connection pool apart from :attr:`http`'s."""
        return _started(self._webhook_http)

    @property
    def decoder(self) -> PageDecoder:
        """The page decoder: worker processes, or in place (``decode_in_workers``)."""
        return _started(self._decoder)

    @property
    def writers(self) -> GroupWriters:
        """The group writers every pull of the process writes its pages through."""
        return _started(self._writers)

    @property
    def scheduler(self) -> SyncScheduler | None:
        """The background sync tick (None unless ``background``); :meth:`close` stops it."""
        return self._scheduler

    def sync_context(self) -> SyncContext:
        """What the sync engine and the flows built on it take: the same object every time."""
        return _started(self._sync)


def _started(resource: T | None) -> T:
    if resource is None:
        raise RuntimeError("the process's services are not started")
    return resource
