"""Every route of the syncsvc web application, by audience."""

from __future__ import annotations

from aiohttp import web

from syncsvc.web import openapi
from syncsvc.web.handlers import (
    api,
    attachments_api,
    connect,
    data_api,
    disconnect_api,
    jwks,
    logos,
    operators,
    patient,
    picker_api,
)


def setup_routes(app: web.Application) -> None:
    """Register the patient pages, the host-app API and the well-known endpoints."""
    connect.setup_routes(app)
    picker_api.setup_routes(app)
    logos.setup_routes(app)
    patient.setup_routes(app)
    api.setup_routes(app)
    data_api.setup_routes(app)
    attachments_api.setup_routes(app)
    openapi.setup_routes(app)
    disconnect_api.setup_routes(app)
    jwks.setup_routes(app)
    operators.setup_routes(app)
