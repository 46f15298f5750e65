"""Placeholder; replaced by the real admin module."""

from aiohttp import web

from .state import SandboxState


def setup_routes(app: web.Application, state: SandboxState) -> None:
    """Register this part's routes."""
