"""Fixtures for the host-app API tests: the running service, the sandbox, connected users."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.web.conftest import *  # noqa: F403 - the service's fixtures, found by name
from tests.integration.web.flows import Flow, connect_through_pages

NANCY = "12724066"
WILMA = "12742400"


@dataclass(frozen=True)
class Page:
    """One response of the resource feed, read whole."""

    status: int
    content_type: str
    cursor: str
    has_more: bool
    link: str | None
    body: bytes

    def bundle(self) -> dict[str, Any]:
        """The body as a Bundle."""
        document: dict[str, Any] = orjson.loads(self.body)
        return document

    def resources(self) -> list[dict[str, Any]]:
        """The resources of the page, in order, whatever the format."""
        if self.content_type == "application/x-ndjson":
            return [orjson.loads(line) for line in self.body.splitlines() if line]
        return [entry["resource"] for entry in self.bundle()["entry"]]


async def read_page(client: aiohttp.ClientSession, path: str, **params: Any) -> Page:
    """GET one feed page."""
    async with client.get(path, params=params) as response:
        body = await response.read()
        assert response.status == 200, body
        # Streamed pages carry every security header too (patient data: never cached).
        assert response.headers["Cache-Control"] == "no-store"
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        return Page(
            status=response.status,
            content_type=response.content_type,
            cursor=response.headers["X-Next-Cursor"],
            has_more=response.headers["X-Has-More"] == "true",
            link=response.headers.get("Link"),
            body=body,
        )


async def read_all(
    client: aiohttp.ClientSession, path: str, *, since: str | None = None, **params: Any
) -> tuple[list[dict[str, Any]], str, int]:
    """Every resource from ``since`` on, page by page; also the last cursor and the page count."""
    resources: list[dict[str, Any]] = []
    pages = 0
    while True:
        if since is not None:
            params["since"] = since
        page = await read_page(client, path, **params)
        pages += 1
        resources += page.resources()
        since = page.cursor
        if not page.has_more:
            return resources, page.cursor, pages
        assert pages < 100, "the feed does not end"


def deleted_reason(resource: dict[str, Any]) -> str | None:
    """The deletion reason of a tombstone, or None for a live resource."""
    for extension in resource.get("meta", {}).get("extension", []):
        if extension["url"].endswith("/deleted"):
            reason: str = extension["valueCode"]
            return reason
    return None


@pytest.fixture
async def generic(flow: Flow) -> str:
    """The sandbox's generic tenant, registered with the service; its name."""
    await flow.register(GENERIC_TENANT, name="generic")
    return "generic"


async def connect(client: aiohttp.ClientSession, user_id: str, username: str, tenant: str) -> str:
    """Connect ``username``'s record for ``user_id`` through the real pages; the connection id."""
    await connect_through_pages(client, username, tenant=tenant, user_id=user_id)
    async with client.get(f"/api/v1/users/{user_id}/connections") as response:
        assert response.status == 200
        listed = await response.json()
    connection_id: str = listed["connections"][-1]["id"]
    return connection_id


@dataclass
class Receiver:
    """A host application's webhook endpoint that fails its first ``failures`` requests."""

    failures: int = 0
    status_on_failure: int = 500
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        if len(self.received) <= self.failures:
            return web.Response(status=self.status_on_failure, text="not now")
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """The receiver, serving on 127.0.0.1 at an ephemeral port."""
    state = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", state.handle)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    state.url = f"http://127.0.0.1:{sock.getsockname()[1]}/hooks"
    try:
        yield state
    finally:
        await runner.cleanup()
        sock.close()
