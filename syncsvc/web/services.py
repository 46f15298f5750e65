"""Typed access to the application's shared resources from a request."""

from __future__ import annotations

from aiohttp import web

from syncsvc.connect.grant import LaunchServices
from syncsvc.web.keys import SERVICES


def launch_services(request: web.Request) -> LaunchServices:
    """What the launch needs, from the application of ``request``."""
    services = request.app[SERVICES]
    return LaunchServices(
        settings=services.settings,
        sessionmaker=services.sessionmaker,
        vault=services.vault,
        http=services.http,
    )
