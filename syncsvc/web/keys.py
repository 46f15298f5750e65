"""Typed application keys for the shared resources of one aiohttp application (no globals).

Each resource is created and closed in the app's ``cleanup_ctx``, in dependency order.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from syncsvc.connect.client_jwks import ClientJwks
from syncsvc.connect.signing import Signer
from syncsvc.settings import Settings
from syncsvc.sync.scheduler import SyncScheduler
from syncsvc.vault import Vault
from syncsvc.web.metrics import Metrics
from syncsvc.web.ratelimit import RateLimits
from syncsvc.work_metrics import WorkMetrics

SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", AsyncEngine)
SESSIONMAKER = web.AppKey("sessionmaker", async_sessionmaker[AsyncSession])
VAULT = web.AppKey("vault", Vault)
SIGNER = web.AppKey("signer", Signer)
#: The served JWKS of the private_key_jwt clients, rebuilt only when their keys change.
CLIENT_JWKS = web.AppKey("client_jwks", ClientJwks)
#: The one outbound HTTP client of the process (DummyCookieJar, explicit timeouts).
HTTP = web.AppKey("http", aiohttp.ClientSession)
#: The webhook client: a connection pool apart from HTTP's, so the two never share a connection.
WEBHOOK_HTTP = web.AppKey("webhook_http", aiohttp.ClientSession)
#: The background sync tick, when this process runs one.
SCHEDULER = web.AppKey("scheduler", SyncScheduler)
#: This application's Prometheus registry and instruments (never the global registry).
METRICS = web.AppKey("metrics", Metrics)
#: The work counters of a process without a web application (a worker's metrics port).
WORK_METRICS = web.AppKey("work_metrics", WorkMetrics)
#: Per-session and per-API-key request rates of this application.
RATE_LIMITS = web.AppKey("rate_limits", RateLimits)
