"""Typed application keys for the shared resources of one aiohttp application (no globals).

The process's resources are opened and closed with its :class:`~syncsvc.services.Services`, in
the app's ``cleanup_ctx``; handlers reach them through ``SERVICES``.
"""

from __future__ import annotations

from aiohttp import web

from syncsvc.connect.client_jwks import ClientJwks
from syncsvc.connect.signing import Signer
from syncsvc.services import Services
from syncsvc.settings import Settings
from syncsvc.web.metrics import Metrics
from syncsvc.web.ratelimit import RateLimits

#: The process's composition root: database, vault, HTTP clients, sync context, scheduler.
SERVICES = web.AppKey("services", Services)
#: The process settings (those of SERVICES), readable before the services start.
SETTINGS = web.AppKey("settings", Settings)
SIGNER = web.AppKey("signer", Signer)
#: The served JWKS of the private_key_jwt clients, rebuilt only when their keys change.
CLIENT_JWKS = web.AppKey("client_jwks", ClientJwks)
#: This application's Prometheus registry and instruments (never the global registry).
METRICS = web.AppKey("metrics", Metrics)
#: Per-session and per-API-key request rates of this application.
RATE_LIMITS = web.AppKey("rate_limits", RateLimits)
