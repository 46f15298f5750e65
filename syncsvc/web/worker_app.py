"""The HTTP surface of ``syncsvc worker --metrics-port``: /metrics, /healthz and /readyz.

A worker has no pages and no API; this lets Prometheus scrape its work counters and a probe ask
whether it is ready. ``/metrics`` needs the operator token, as ``serve``'s does (tenant names
describe the deployment); the probes need none. Readiness is the same computation as ``serve``'s
``/readyz`` (database, schema, the worker's own tick). Tenant health gauges come from ``serve``
only: they are the database's, the same whichever process reads them.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import generate_latest

from syncsvc.health.readiness import snapshot
from syncsvc.services import Services
from syncsvc.web.auth import require_operator
from syncsvc.web.handlers.operators import healthz, readyz
from syncsvc.web.keys import SERVICES, SETTINGS
from syncsvc.web.metrics import CONTENT_TYPE
from syncsvc.web.middlewares import add_security_headers, error_middleware


async def worker_metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: the worker's work counters, its readiness and the due backlog now."""
    require_operator(request)
    services = request.app[SERVICES]
    work = services.metrics
    tick = services.settings.tick_seconds
    state = await snapshot(services.sessionmaker, services.scheduler, tick)
    work.scrape.snapshot = state
    return web.Response(body=generate_latest(work.registry), headers={"Content-Type": CONTENT_TYPE})


def create_worker_app(services: Services) -> web.Application:
    """The metrics and probe endpoints of one worker process (its services started)."""
    app = web.Application(middlewares=[error_middleware])
    app[SERVICES] = services
    app[SETTINGS] = services.settings
    app.on_response_prepare.append(add_security_headers)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", worker_metrics)
    return app


@asynccontextmanager
async def serving_worker_app(app: web.Application, host: str, port: int) -> AsyncIterator[int]:
    """Serve ``app`` on ``host:port`` until the block ends; yields the bound port (for port 0).

    Raises OSError naming the address when it cannot listen there.
    """
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        site = web.SockSite(runner, sock)
        await site.start()
        yield sock.getsockname()[1]
    finally:
        await runner.cleanup()
