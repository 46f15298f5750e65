"""Brand logos: fetched by ``tenants import`` over real HTTPS, checked, stored, served by syncsvc.

A logo server on loopback (TLS from a throwaway CA the import process is told to trust) serves a
good PNG and hostile answers: too big (declared and streamed), SVG, a type that lies, plain
http, and redirects to a metadata address and to plain http. Each hostile logo is refused and
reported while the import succeeds; the good one is served from ``/logos/{sha256}``, never
linked from the patient's page; a re-import replaces a changed logo and keeps one that fails to
fetch. SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from yarl import URL

from syncsvc.directory.logos import MAX_LOGO_BYTES
from syncsvc.sandbox.patient import parse_forms
from tests.integration.cli.runner import environment, syncsvc
from tests.integration.tls import LoopbackTls, self_signed
from tests.integration.web.flows import Flow

CONNECTION_TYPE = {
    "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
    "code": "hl7-fhir-rest",
}


def png(red: int) -> bytes:
    """A real 1x1 PNG of one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(bytes([0, red, 0, 0]))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


@dataclass
class LogoServer:
    """What the logo server answers, and the paths it was asked for."""

    tls: LoopbackTls
    port: int = 0
    good: bytes = field(default_factory=lambda: png(200))
    failing: bool = False
    asked: list[str] = field(default_factory=list)

    def url(self, path: str, scheme: str = "https") -> str:
        return f"{scheme}://localhost:{self.port}{path}"


@pytest.fixture
async def logo_server() -> AsyncIterator[LogoServer]:
    state = LogoServer(tls=self_signed("localhost"))

    async def answer(request: web.Request) -> web.StreamResponse:
        path = request.path
        state.asked.append(path)
        if path == "/good.png":
            if state.failing:
                return web.Response(status=503)
            return web.Response(body=state.good, content_type="image/png")
        if path == "/declared-big.png":
            body = b"\x89PNG\r\n\x1a\n" + bytes(MAX_LOGO_BYTES)
            return web.Response(body=body, content_type="image/png")
        if path == "/streamed-big.png":
            # No Content-Length: only counting while reading stops it.
            response = web.StreamResponse(headers={"Content-Type": "image/png"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(b"\x89PNG\r\n\x1a\n")
            for _ in range(MAX_LOGO_BYTES // 16_384 + 2):
                await response.write(bytes(16_384))
            await response.write_eof()
            return response
        if path == "/logo.svg":
            svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
            return web.Response(body=svg, content_type="image/svg+xml")
        if path == "/lying.png":
            return web.Response(body=b"<html><script>alert(1)</script>", content_type="image/png")
        if path == "/to-metadata":
            raise web.HTTPFound("https://169.254.169.254/latest/logo.png")
        if path == "/to-http":
            raise web.HTTPFound(state.url("/good.png", scheme="http"))
        raise web.HTTPNotFound

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=state.tls.server)
    await site.start()
    state.port = runner.addresses[0][1]
    try:
        yield state
    finally:
        await runner.cleanup()


def _brand(key: str, name: str, *logos: str) -> list[dict[str, Any]]:
    """A brand Organization with its logos and one Endpoint (never contacted: no discovery)."""
    brand: dict[str, Any] = {
        "url": "http://hl7.org/fhir/StructureDefinition/organization-brand",
        "extension": [{"url": "brandLogo", "valueUrl": logo} for logo in logos],
    }
    return [
        {
            "fullUrl": f"https://brands.example.org/Organization/{key}",
            "resource": {
                "resourceType": "Organization",
                "id": key,
                "active": True,
                "name": name,
                "extension": [brand],
                "address": [{"city": "Houma", "state": "LA"}],
                "endpoint": [{"reference": f"Endpoint/{key}"}],
            },
        },
        {
            "fullUrl": f"https://brands.example.org/Endpoint/{key}",
            "resource": {
                "resourceType": "Endpoint",
                "id": key,
                "status": "active",
                "connectionType": CONNECTION_TYPE,
                "address": f"https://fhir.{key}.example.org/r4",
            },
        },
    ]


async def _import(
    flow: Flow, tmp_path: Path, logos: LogoServer, bundle: dict[str, Any], *extra: str
) -> dict[str, Any]:
    path = tmp_path / "brands.json"
    path.write_bytes(orjson.dumps(bundle))
    ca = tmp_path / "logo-ca.pem"
    ca.write_bytes(logos.tls.cert_pem)
    env = environment(flow.service.settings) | {"SSL_CERT_FILE": str(ca)}
    done = await syncsvc(
        None, "tenants", "import", str(path), "--client-id", "syncsvc-public",
        "--directory", "bayou-brands", "--json", *extra, env=env,
    )  # fmt: skip
    assert done.code == 0, done.stderr
    summary = done.json()
    assert isinstance(summary, dict)
    return summary


def _failed(summary: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Each refused tenant's reason and whether its earlier logo was kept."""
    return {
        tenant: (failure["reason"], failure["kept"])
        for failure in summary["logos"]["failed"]
        for tenant in failure["tenants"]
    }


async def test_logos_are_fetched_at_import_checked_and_served_by_syncsvc(
    flow: Flow, tmp_path: Path, logo_server: LogoServer
) -> None:
    url = logo_server.url
    embedded = "data:image/gif;base64," + base64.b64encode(b"GIF89a" + bytes(30)).decode()
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            # SMART lists sizes and formats: the SVG is refused, the PNG after it is taken.
            *_brand("bayou", "Bayou Health System", url("/logo.svg"), url("/good.png")),
            *_brand("delta", "Delta Clinic", url("/good.png")),  # the same image, stored once
            *_brand("gulf", "Gulf Pediatrics", embedded),
            *_brand("big", "Big Logo Clinic", url("/declared-big.png")),
            *_brand("streamed", "Streamed Logo Clinic", url("/streamed-big.png")),
            *_brand("svg", "Svg Clinic", url("/logo.svg")),
            *_brand("lying", "Lying Clinic", url("/lying.png")),
            *_brand("plain", "Plain Clinic", url("/good.png", scheme="http")),
            *_brand("meta", "Metadata Clinic", url("/to-metadata")),
            *_brand("downgrade", "Downgrade Clinic", url("/to-http")),
            *_brand("none", "No Logo Clinic"),
        ],
    }

    summary = await _import(flow, tmp_path, logo_server, bundle, "--allow-loopback")

    assert summary["imported"] == 11  # no refused logo failed the import
    logos = summary["logos"]
    assert (logos["shown"], logos["stored"]) == (3, 2)
    failed = _failed(summary)
    assert set(failed) == {
        "big-logo-clinic", "streamed-logo-clinic", "svg-clinic", "lying-clinic",
        "plain-clinic", "metadata-clinic", "downgrade-clinic",
    }  # fmt: skip
    assert "larger than 256 KB" in failed["big-logo-clinic"][0]
    assert "larger than 256 KB" in failed["streamed-logo-clinic"][0]
    assert "SVG is refused" in failed["svg-clinic"][0]
    assert "not the image/png it is declared as" in failed["lying-clinic"][0]
    assert "not https" in failed["plain-clinic"][0]
    assert "is not a public address" in failed["metadata-clinic"][0]
    assert "not https" in failed["downgrade-clinic"][0]
    # The refused redirect targets were never asked for; the good logo once for two brands.
    assert logo_server.asked.count("/good.png") == 1

    # The patient's page shows the logo from syncsvc, beside the brand's name.
    good = hashlib.sha256(logo_server.good).hexdigest()
    link = await flow.link("user-logos")
    body = await _page(flow, link, "bayou")
    assert f'<img src="/logos/{good}" alt="Bayou Health System"' in body
    assert "localhost" not in body  # never hot-linked
    async with flow.http.get(f"{flow.service.origin}/logos/{good}") as served:
        assert served.status == 200
        assert await served.read() == logo_server.good
        assert served.headers["Content-Type"] == "image/png"
        assert served.headers["X-Content-Type-Options"] == "nosniff"
        assert "immutable" in served.headers["Cache-Control"]
        etag = served.headers["ETag"]
    async with flow.http.get(
        f"{flow.service.origin}/logos/{good}", headers={"If-None-Match": etag}
    ) as cached:
        assert cached.status == 304
    gif = hashlib.sha256(b"GIF89a" + bytes(30)).hexdigest()
    async with flow.http.get(f"{flow.service.origin}/logos/{gif}") as served:
        assert served.headers["Content-Type"] == "image/gif"
    async with flow.http.get(f"{flow.service.origin}/logos/{'0' * 64}") as missing:
        assert missing.status == 404

    # The brand changes its logo: a re-import serves the new one; the old is gone.
    logo_server.good = png(30)
    again = await _import(flow, tmp_path, logo_server, bundle, "--allow-loopback")
    fresh = hashlib.sha256(logo_server.good).hexdigest()
    assert (again["logos"]["stored"], again["logos"]["deleted"]) == (1, 1)
    assert f'src="/logos/{fresh}"' in await _page(flow, link, "bayou")
    async with flow.http.get(f"{flow.service.origin}/logos/{good}") as gone:
        assert gone.status == 404

    # The logo server fails, then loopback is not allowed: the logos fetched before stay.
    logo_server.failing = True
    down = await _import(flow, tmp_path, logo_server, bundle, "--allow-loopback")
    assert _failed(down)["delta-clinic"] == ("answered 503 (" + url("/good.png") + ")", True)
    logo_server.failing = False
    asked = len(logo_server.asked)
    local = await _import(flow, tmp_path, logo_server, bundle)
    reason, kept = _failed(local)["delta-clinic"]
    assert "(--allow-loopback)" in reason
    assert kept
    assert len(logo_server.asked) == asked  # nothing fetched from this machine
    assert f'src="/logos/{fresh}"' in await _page(flow, link, "delta")


async def _page(flow: Flow, link: str, query: str) -> str:
    async with flow.http.get(URL(link).update_query(q=query)) as response:
        assert response.status == 200
        body = await response.text()
    assert parse_forms(body)
    assert len(body.encode()) < 50_000
    return body
