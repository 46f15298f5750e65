"""HEAD answers headers only, on every GET route, over one raw keep-alive connection.

The resource feeds used to stream their body after a HEAD answer; the next response on the same
connection then started with leftover patient data (a desync behind any pooling proxy). The test
speaks HTTP/1.1 by hand, so nothing between it and the service can hide stray bytes.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from syncsvc.sandbox.server import RunningSandbox
from tests.integration.host_api.conftest import NANCY, connect
from tests.integration.web.flows import sync_now
from tests.integration.web.service import RunningService

TIMEOUT = 10
API = {"Authorization": "Bearer test-api-key"}
ADMIN = {"Authorization": "Bearer test-admin-token"}


@dataclass(frozen=True)
class RawResponse:
    """A response read off the wire: status line, headers and exactly its framed body."""

    status_line: str
    headers: dict[str, str]
    body: bytes


async def _read_response(reader: asyncio.StreamReader, *, head: bool) -> RawResponse:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    status_line, *lines = raw.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if head:
        return RawResponse(status_line, headers, b"")
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        for _ in range(100_000):
            size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), TIMEOUT)).strip(), 16)
            chunk = await asyncio.wait_for(reader.readexactly(size + 2), TIMEOUT)
            if size == 0:
                break
            body += chunk[:-2]
        return RawResponse(status_line, headers, body)
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
    return RawResponse(status_line, headers, body)


def _request(method: str, path: str, host: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _concrete(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)


async def test_head_sends_headers_only_on_every_get_route(
    service: RunningService,
    api: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    generic: str,
) -> None:
    connection_id = await connect(api, "user-1", "nancysmart", generic)
    await sync_now(service)
    values = {
        "user_id": "user-1",
        "connection_id": connection_id,
        "tenant": generic,
        "sha256": "0" * 64,
        "resource_type": "DocumentReference",
        "resource_id": "none",
        "position": "0",
    }
    # Every GET route the application has, placeholders filled with real ids.
    paths = sorted(
        {
            _concrete(route.resource.canonical, values)
            for route in service.app.router.routes()
            if route.method == "GET" and route.resource is not None
        }
    )
    feeds = [p for p in paths if p.endswith("/resources")]
    assert feeds == [
        f"/api/v1/connections/{connection_id}/resources",
        "/api/v1/users/user-1/resources",
    ]
    target = urlsplit(service.origin)
    host = target.netloc
    reader, writer = await asyncio.open_connection(target.hostname, target.port)
    try:
        answered = []
        for path in paths:
            headers = ADMIN if path.startswith(("/tenants", "/metrics")) else API
            writer.write(_request("HEAD", path, host, headers))
            await writer.drain()
            head = await _read_response(reader, head=True)
            answered.append((path, head.status_line))
            # The next request on the same connection must be answered from its first byte.
            writer.write(_request("GET", "/healthz", host, {}))
            await writer.drain()
            after = await _read_response(reader, head=False)
            assert after.status_line == "HTTP/1.1 200 OK", (path, after.status_line)
            assert after.body, path
        # The feeds answered a real page's headers (a 200 with a cursor), not an error.
        for path, status in answered:
            if path in feeds:
                assert status == "HTTP/1.1 200 OK", (path, status)
        # The callback offers no HEAD: answering one would use up a launch.
        writer.write(_request("HEAD", "/callback/generic?state=x&code=y", host, {}))
        await writer.drain()
        refused = await _read_response(reader, head=True)
        assert refused.status_line == "HTTP/1.1 405 Method Not Allowed"
        # The feed's GET still carries the patient's data, on the same connection.
        writer.write(_request("GET", feeds[0], host, API))
        await writer.drain()
        page = await _read_response(reader, head=False)
        assert page.status_line == "HTTP/1.1 200 OK"
        assert NANCY.encode() in page.body
    finally:
        writer.close()
        await writer.wait_closed()
