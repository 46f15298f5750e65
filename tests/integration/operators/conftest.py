"""Fixtures for the operator endpoints: the service (run as the web tests run it) and clients."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web

from tests.integration.web.conftest import *  # noqa: F403 - the service's fixtures, found by name
from tests.integration.web.service import RunningService

OPERATOR_TOKEN = "test-admin-token"


@pytest.fixture
async def operator(service: RunningService) -> AsyncIterator[aiohttp.ClientSession]:
    """An operator's HTTP client, with the operator token."""
    async with aiohttp.ClientSession(
        base_url=service.origin,
        headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
        timeout=aiohttp.ClientTimeout(total=20),
    ) as session:
        yield session


@pytest.fixture
async def anonymous(service: RunningService) -> AsyncIterator[aiohttp.ClientSession]:
    """A client without credentials (a load balancer, or someone who should not get in)."""
    async with aiohttp.ClientSession(
        base_url=service.origin, timeout=aiohttp.ClientTimeout(total=20)
    ) as session:
        yield session


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on an ephemeral loopback port; yields its origin."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()
        sock.close()
