"""The sandbox EHR as an aiohttp application, and a handle that runs it on loopback.

``create_sandbox_app`` assembles the authorization server, the FHIR server and the admin API over
one shared :class:`SandboxState`. ``running_sandbox`` serves it on 127.0.0.1 (an ephemeral port by
default) for tests, the demo and benchmarks.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from . import admin, auth, fhir
from .config import SandboxConfig, TenantConfig
from .profiles import TenantUrls
from .state import RequestLogEntry, SandboxState

STATE_KEY = web.AppKey("sandbox_state", SandboxState)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _bearer_claims(request: web.Request, state: SandboxState) -> dict[str, object] | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return state.read_access_token(token.strip())


@web.middleware
async def request_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record every request with the tenant of the bearer token presented, whatever the outcome."""
    state = request.app[STATE_KEY]
    claims = _bearer_claims(request, state)
    status = 500
    state.in_flight += 1
    arrived_among = state.in_flight
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        state.in_flight -= 1
        state.request_log.append(
            RequestLogEntry(
                at=state.now(),
                method=request.method,
                url=str(request.url),
                tenant_id=request.match_info.get("tenant"),
                token_tenant=_claim_str(claims, "tenant"),
                token_host=_claim_str(claims, "host"),
                status=status,
                token_id=_claim_str(claims, "jti"),
                in_flight=arrived_among,
            )
        )


def _claim_str(claims: dict[str, object] | None, name: str) -> str | None:
    if claims is None:
        return None
    value = claims.get(name)
    return value if isinstance(value, str) else None


def create_sandbox_app(
    config: SandboxConfig, origin: str = "http://127.0.0.1:0"
) -> web.Application:
    """The sandbox application; ``origin`` is fixed up by ``running_sandbox`` once bound."""
    app = web.Application(middlewares=[request_log_middleware])
    state = SandboxState(config, origin)
    app[STATE_KEY] = state
    admin.setup_routes(app, state)
    auth.setup_routes(app, state)
    fhir.setup_routes(app, state)
    return app


@dataclass
class RunningSandbox:
    """A sandbox listening on loopback."""

    app: web.Application
    state: SandboxState
    origin: str

    def urls(self, tenant_id: str) -> TenantUrls:
        """Absolute URLs of a configured tenant."""
        tenant = self.tenant(tenant_id)
        return self.state.urls(tenant)

    def tenant(self, tenant_id: str) -> TenantConfig:
        """A configured tenant; raises ``KeyError`` for an unknown id."""
        tenant = self.state.tenant(tenant_id)
        if tenant is None:
            raise KeyError(tenant_id)
        return tenant


@contextlib.asynccontextmanager
async def running_sandbox(
    config: SandboxConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    sock: socket.socket | None = None,
) -> AsyncIterator[RunningSandbox]:
    """Serve the sandbox on ``host:port`` (port 0: ephemeral), or on a bound ``sock``."""
    app = create_sandbox_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site: web.BaseSite = (
        web.SockSite(runner, sock) if sock is not None else web.TCPSite(runner, host, port)
    )
    await site.start()
    try:
        bound_port = int(runner.addresses[0][1]) if runner.addresses else port
        origin = f"http://{host}:{bound_port}"
        app[STATE_KEY].origin = origin
        yield RunningSandbox(app=app, state=app[STATE_KEY], origin=origin)
    finally:
        await runner.cleanup()
