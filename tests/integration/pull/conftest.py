"""Fixtures of the pull tests: a sync context on the test's database, the sandbox admin API."""

from __future__ import annotations

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.sandbox.server import RunningSandbox
from syncsvc.settings import Settings
from syncsvc.sync.context import SyncContext
from syncsvc.vault import Vault

from . import SandboxAdmin


@pytest.fixture
def ctx(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    vault: Vault,
    http: aiohttp.ClientSession,
) -> SyncContext:
    """A sync context on this test's database."""
    return SyncContext(settings, sessionmaker, vault, http)


@pytest.fixture
def admin(sandbox: RunningSandbox, http: aiohttp.ClientSession) -> SandboxAdmin:
    """The sandbox's admin API."""
    return SandboxAdmin(sandbox, http)
