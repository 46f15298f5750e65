"""Every route of the syncsvc web application, by audience."""

from __future__ import annotations

from aiohttp import web

from syncsvc.web.handlers import api, connect, jwks


def setup_routes(app: web.Application) -> None:
    """Register the patient pages, the host-app API and the well-known endpoints."""
    connect.setup_routes(app)
    api.setup_routes(app)
    jwks.setup_routes(app)
