"""Fixtures of the pull tests: a sync context on the test's database, the sandbox admin API."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.sandbox.server import RunningSandbox
from syncsvc.settings import Settings
from syncsvc.sync.context import SyncContext
from syncsvc.sync.pipeline.decode import PageDecoder
from syncsvc.vault import Vault

from . import SandboxAdmin


@pytest.fixture(params=["in-place"])
async def ctx(
    request: pytest.FixtureRequest,
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    vault: Vault,
    http: aiohttp.ClientSession,
) -> AsyncIterator[SyncContext]:
    """A sync context on this test's database.

    Pages are decoded in place; a test parametrized with ``indirect`` ``"worker"`` has every
    page decoded by a worker process instead (as ``syncsvc worker`` does on a multi-core host).
    """
    if request.param == "in-place":
        yield SyncContext(settings, sessionmaker, vault, http)
        return
    decoder = PageDecoder(workers=1, inline_below=0)
    try:
        await decoder.start()
        yield SyncContext(settings, sessionmaker, vault, http, decoder=decoder)
    finally:
        await decoder.close()
    # Every test of this kind searches: had its pages been decoded in place, it proved nothing.
    assert decoder.worker_pages > 0


@pytest.fixture
def admin(sandbox: RunningSandbox, http: aiohttp.ClientSession) -> SandboxAdmin:
    """The sandbox's admin API."""
    return SandboxAdmin(sandbox, http)
