"""What the sync engine needs from the process, handed down explicitly (no globals).

A :class:`SyncContext` is the narrow view of the process's composition root
(``syncsvc.services.Services``) that refresh, pull, disconnect and the launch take: the root
builds one per process and hands the same one to every caller. Tests build their own.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.fhir.page_limits import PageBudget, PageLimits
from syncsvc.settings import Settings
from syncsvc.sync.pipeline.decode import PageDecoder
from syncsvc.sync.pipeline.sink import PageSink
from syncsvc.sync.pipeline.writer import GroupWriters
from syncsvc.vault import Vault
from syncsvc.work_metrics import Pipeline, WorkMetrics


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


def new_owner_id() -> str:
    """A lease owner id naming this process (host and pid help an operator find it)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True)
class SyncContext:
    """The shared resources of refresh and pull work in one process."""

    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    vault: Vault
    #: The process's one outbound client (DummyCookieJar, explicit timeouts).
    http: aiohttp.ClientSession
    #: The process's webhook client, a pool apart from ``http`` (see
    #: :func:`syncsvc.http.create_webhook_client`); None: each delivery batch opens its own.
    webhook_http: aiohttp.ClientSession | None = None
    #: The lease owner id of this process.
    owner: str = field(default_factory=new_owner_id)
    #: Decodes search pages; in place unless the process started worker processes for it.
    decoder: PageDecoder = field(default_factory=PageDecoder)
    #: Injected so tests can move time without sleeping.
    clock: Callable[[], dt.datetime] = utcnow
    #: The process's work counters (a private registry unless the process serves metrics).
    metrics: WorkMetrics = field(default_factory=WorkMetrics)
    #: The process's group writers, made and closed by whoever built the context (see
    #: :func:`syncsvc.sync.pipeline.writer.group_writers`). None: a context that never pulls,
    #: or a test's, gets writers of its own on first use.
    group_writers: GroupWriters | None = None

    @functools.cached_property
    def page_budget(self) -> PageBudget:
        """Page bytes being read or decoded at once by this context's pulls.

        The process's composition root makes one context, so this is the process's budget.
        """
        return PageBudget(self.settings.page_budget_bytes)

    def page_limits(self, max_bytes: int | None, max_entries: int | None) -> PageLimits:
        """A tenant's page caps: its own where it has them, else the settings'.

        A cap never exceeds the budget, so one page can always be reserved.
        """
        return PageLimits(
            max_bytes=min(max_bytes or self.settings.max_page_bytes, self.page_budget.limit),
            max_entries=max_entries or self.settings.max_page_entries,
        )

    def now(self) -> dt.datetime:
        """The current time by this context's clock."""
        return self.clock()

    @functools.cached_property
    def pages(self) -> PageSink:
        """Where this context's pulls put their pages, and run what must follow them."""
        writers = self.group_writers
        if writers is None:
            writers = GroupWriters(self.sessionmaker, lanes=self.settings.write_lanes)
        return PageSink(self.sessionmaker, self.decoder, writers, self.clock)

    def publish_pipeline(self) -> None:
        """Let this context's metrics show its page pipeline (decoder and writers) when scraped."""
        pages = self.pages
        self.metrics.scrape.pipeline = Pipeline(
            decoding=lambda: pages.decoding,
            writing=lambda: pages.writing,
            writes=pages.writes,
        )
