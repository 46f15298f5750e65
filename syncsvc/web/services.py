"""Typed access to the application's shared resources from a request."""

from __future__ import annotations

from aiohttp import web

from syncsvc.connect.launch import LaunchServices
from syncsvc.web.keys import HTTP, SESSIONMAKER, SETTINGS, VAULT


def launch_services(request: web.Request) -> LaunchServices:
    """What the launch needs, from the application of ``request``."""
    app = request.app
    return LaunchServices(
        settings=app[SETTINGS], sessionmaker=app[SESSIONMAKER], vault=app[VAULT], http=app[HTTP]
    )
