"""The syncsvc web application: ``create_app(services)``.

The process's resources belong to its :class:`~syncsvc.services.Services` (``SERVICES``), opened
and closed in ``cleanup_ctx`` in dependency order: database, the HTTP clients, the page decoder,
then the sync scheduler (which needs them all, and stops first). The application adds what only
it uses (signer, rate limits, metrics, templates) as typed ``AppKey`` entries (``keys``).
Configuration problems (no vault key, no link-signing key) fail at creation, before listening.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import aiohttp_jinja2
import jinja2
from aiohttp import web

from syncsvc.connect.client_jwks import ClientJwks
from syncsvc.connect.signing import Signer
from syncsvc.errors import ConfigError
from syncsvc.process import tune_gc
from syncsvc.services import Services
from syncsvc.web.keys import CLIENT_JWKS, METRICS, RATE_LIMITS, SERVICES, SETTINGS, SIGNER
from syncsvc.web.metrics import Metrics
from syncsvc.web.middlewares import (
    add_security_headers,
    context_middleware,
    control_character_middleware,
    error_middleware,
)
from syncsvc.web.ratelimit import KeyedRateLimiter, RateLimits
from syncsvc.web.routes import setup_routes

MAX_REQUEST_BYTES = 1024 * 1024


async def _services(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    await services.start()
    try:
        app[CLIENT_JWKS] = ClientJwks(services.sessionmaker, services.vault)
        services.start_background()
        yield
    finally:
        await services.close()


async def keys_on_hangup(app: web.Application) -> AsyncIterator[None]:
    """SIGHUP re-reads the vault key file at once (a change is also noticed by itself).

    For a process that serves one application (``syncsvc serve``), as a ``cleanup_ctx``.
    """
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, app[SERVICES].vault.refresh)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
        yield
        return
    yield
    loop.remove_signal_handler(signal.SIGHUP)


async def _tune_process(app: web.Application) -> None:
    # Once everything of start-up exists: the process then runs for a long time.
    tune_gc()


def create_app(services: Services) -> web.Application:
    """The application on ``services`` (opened when it starts, closed when it stops).

    Services built with ``background`` run the sync scheduler inside the web process
    (``syncsvc serve`` does; tests drive sync explicitly).
    """
    settings = services.settings
    if settings.link_signing_key is None:
        raise ConfigError(
            "No link-signing key is configured: run `syncsvc keys init` (a key file in the data "
            "folder) or set SYNCSVC_LINK_SIGNING_KEY to a long random string (connect links and "
            "patient sessions are signed with it)."
        )
    metrics = Metrics(services.metrics)
    app = web.Application(
        # Metrics sit outside the error boundary, so they see the status the client gets.
        middlewares=[
            context_middleware,
            metrics.middleware,
            error_middleware,
            control_character_middleware,
        ],
        client_max_size=MAX_REQUEST_BYTES,
    )
    app[SERVICES] = services
    app[SETTINGS] = settings
    # A signal, not a middleware: it also reaches streamed responses and error pages.
    app.on_response_prepare.append(add_security_headers)
    app[METRICS] = metrics
    app[SIGNER] = Signer(settings.link_signing_key.reveal())
    app[RATE_LIMITS] = RateLimits(
        connect_start=KeyedRateLimiter(
            settings.connect_starts_per_hour / 3600, settings.connect_start_burst
        ),
        link_creation=KeyedRateLimiter(settings.links_per_minute / 60, settings.link_burst),
        picker_search=KeyedRateLimiter(
            settings.picker_searches_per_minute / 60, settings.picker_search_burst
        ),
    )
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("syncsvc.web", "templates"),
        autoescape=True,
    )
    app.cleanup_ctx.append(_services)
    if services.background:
        app.on_startup.append(_tune_process)
    setup_routes(app)
    return app
