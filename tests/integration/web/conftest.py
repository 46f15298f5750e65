"""A running syncsvc web application on loopback, wired to the sandbox EHR.

The service's socket is bound before anything else, so its public URL (and thereby the redirect
URI the sandbox's clients are registered with) is known before either server starts.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from syncsvc.sandbox.config import ClientRegistration, SandboxConfig
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.services import Services
from syncsvc.settings import Settings
from syncsvc.smart.client_auth import generate_private_key
from syncsvc.smart.mixup import tenant_callback_uri
from syncsvc.vault import Vault
from syncsvc.web.app import create_app
from tests.integration.web.flows import Flow
from tests.integration.web.service import (
    PKJWT_CLIENT,
    PKJWT_KEY_ID,
    TEST_TENANT_NAMES,
    RunningService,
)

# What other folders' conftests take with ``from tests.integration.web.conftest import *``: the
# fixtures (pytest finds them by name) and the service's type.
__all__ = [
    "RunningService",
    "api",
    "flow",
    "pkjwt_private_key",
    "sandbox_config",
    "service",
    "service_origin",
    "service_socket",
    "settings",
]


@pytest.fixture
def service_socket() -> Iterator[socket.socket]:
    """A listening-ready socket on 127.0.0.1 at an ephemeral port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def service_origin(service_socket: socket.socket) -> str:
    """The service's origin URL."""
    return f"http://127.0.0.1:{service_socket.getsockname()[1]}"


@pytest.fixture(scope="session")
def pkjwt_private_key() -> str:
    """One RSA key for the private_key_jwt client of the run."""
    return generate_private_key("RSA", kid=PKJWT_KEY_ID)


@pytest.fixture
def settings(db_url: str, tmp_path: Path, service_origin: str) -> Settings:
    """Test settings whose public URL is the service's origin."""
    return Settings.for_tests(data_dir=tmp_path, database_url=db_url, public_url=service_origin)


@pytest.fixture
def sandbox_config(sandbox_config: SandboxConfig, service_origin: str) -> SandboxConfig:
    """The sandbox with syncsvc's callbacks registered, and a private_key_jwt client.

    The shared ``/callback`` (tenants registered before per-tenant redirect URIs) and the
    ``/callback/{name}`` of each name in ``TEST_TENANT_NAMES``.
    """
    callbacks = [
        f"{service_origin}/callback",
        *(tenant_callback_uri(service_origin, name) for name in TEST_TENANT_NAMES),
    ]
    for client in sandbox_config.clients:
        client.redirect_uris.extend(callbacks)
    sandbox_config.clients.append(
        ClientRegistration(
            client_id=PKJWT_CLIENT,
            auth="private_key_jwt",
            redirect_uris=list(callbacks),
            jwks_url=f"{service_origin}/.well-known/jwks.json",
        )
    )
    return sandbox_config


@pytest.fixture
async def service(
    settings: Settings, service_socket: socket.socket, service_origin: str
) -> AsyncIterator[RunningService]:
    """syncsvc's web application serving on the pre-bound socket."""
    app = create_app(Services(settings))
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.SockSite(runner, service_socket)
    await site.start()
    try:
        yield RunningService(app, service_origin, settings, Vault.from_settings(settings))
    finally:
        await runner.cleanup()


@pytest.fixture
async def api(service: RunningService) -> AsyncIterator[aiohttp.ClientSession]:
    """A host application's HTTP client, with its API key."""
    async with aiohttp.ClientSession(
        base_url=service.origin,
        headers={"Authorization": "Bearer test-api-key"},
        timeout=aiohttp.ClientTimeout(total=20),
    ) as session:
        yield session


@pytest.fixture
def flow(
    service: RunningService,
    api: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
) -> Flow:
    """The service, the host app's client, a plain client and the sandbox, for the shared steps."""
    return Flow(service, api, http, sandbox)
