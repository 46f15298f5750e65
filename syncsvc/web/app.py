"""The syncsvc web application: ``create_app(settings)``.

Shared resources are typed ``AppKey`` entries (``syncsvc.web.keys``) created and closed in
``cleanup_ctx`` generators, in dependency order: database, the outbound HTTP client, then the
sync scheduler (which needs both, and stops first).
Configuration problems (no vault key, no link-signing key) fail at creation, before listening.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable

import aiohttp
import aiohttp_jinja2
import jinja2
from aiohttp import web

from syncsvc.connect.client_jwks import ClientJwks
from syncsvc.connect.signing import Signer
from syncsvc.db.engine import create_engine, create_sessionmaker
from syncsvc.errors import ConfigError
from syncsvc.http import create_http_client, create_webhook_client
from syncsvc.process import tune_gc
from syncsvc.settings import Settings
from syncsvc.sync.context import SyncContext
from syncsvc.sync.page_decode import page_decoder
from syncsvc.sync.scheduler import SyncScheduler
from syncsvc.vault import Vault
from syncsvc.web.keys import (
    CLIENT_JWKS,
    ENGINE,
    HTTP,
    METRICS,
    RATE_LIMITS,
    SCHEDULER,
    SESSIONMAKER,
    SETTINGS,
    SIGNER,
    VAULT,
    WEBHOOK_HTTP,
)
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


async def _database(app: web.Application) -> AsyncIterator[None]:
    engine = create_engine(app[SETTINGS].database_url)
    app[ENGINE] = engine
    app[SESSIONMAKER] = create_sessionmaker(engine)
    app[CLIENT_JWKS] = ClientJwks(app[SESSIONMAKER], app[VAULT])
    yield
    await engine.dispose()


def _outbound_http(
    shared: aiohttp.ClientSession | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        # Webhooks get a client (and connection pool) of their own, always owned here.
        async with create_webhook_client() as webhook_client:
            app[WEBHOOK_HTTP] = webhook_client
            if shared is not None:
                app[HTTP] = shared
                yield
                return
            async with create_http_client() as client:
                app[HTTP] = client
                yield

    return context


async def _background_sync(app: web.Application) -> AsyncIterator[None]:
    async with page_decoder(app[SETTINGS].decode_workers) as decoder:
        context = SyncContext(
            settings=app[SETTINGS],
            sessionmaker=app[SESSIONMAKER],
            vault=app[VAULT],
            http=app[HTTP],
            webhook_http=app[WEBHOOK_HTTP],
            decoder=decoder,
            metrics=app[METRICS].work,
        )
        context.publish_pipeline()
        scheduler = SyncScheduler(context)
        app[SCHEDULER] = scheduler
        scheduler.start()
        yield
        await scheduler.stop()


async def keys_on_hangup(app: web.Application) -> AsyncIterator[None]:
    """SIGHUP re-reads the vault key file at once (a change is also noticed by itself).

    For a process that serves one application (``syncsvc serve``), as a ``cleanup_ctx``.
    """
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, app[VAULT].refresh)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
        yield
        return
    yield
    loop.remove_signal_handler(signal.SIGHUP)


async def _tune_process(app: web.Application) -> None:
    # Once everything of start-up exists: the process then runs for a long time.
    tune_gc()


def create_app(
    settings: Settings,
    *,
    http: aiohttp.ClientSession | None = None,
    background: bool = False,
) -> web.Application:
    """The application for ``settings``.

    ``http`` lets a caller share its client (not closed here); ``background`` runs the sync
    scheduler inside the web process (``syncsvc serve`` does; tests drive sync explicitly).
    """
    if settings.link_signing_key is None:
        raise ConfigError(
            "No link-signing key is configured: run `syncsvc keys init` (a key file in the data "
            "folder) or set SYNCSVC_LINK_SIGNING_KEY to a long random string (connect links and "
            "patient sessions are signed with it)."
        )
    metrics = Metrics()
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
    app[SETTINGS] = settings
    # A signal, not a middleware: it also reaches streamed responses and error pages.
    app.on_response_prepare.append(add_security_headers)
    app[METRICS] = metrics
    app[VAULT] = Vault.from_settings(settings)
    app[SIGNER] = Signer(settings.link_signing_key.reveal())
    app[RATE_LIMITS] = RateLimits(
        connect_start=KeyedRateLimiter(
            settings.connect_starts_per_hour / 3600, settings.connect_start_burst
        ),
        link_creation=KeyedRateLimiter(settings.links_per_minute / 60, settings.link_burst),
    )
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("syncsvc.web", "templates"),
        autoescape=True,
    )
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_outbound_http(http))
    if background:
        app.cleanup_ctx.append(_background_sync)
        app.on_startup.append(_tune_process)
    setup_routes(app)
    return app
