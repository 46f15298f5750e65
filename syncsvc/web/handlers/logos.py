"""``/logos/{sha256}``: the brand logos ``tenants import`` fetched, served from the database.

Patients' pages show logos from here only, never from the directory's URLs (see
:mod:`syncsvc.directory.logos`). A digest names one image forever, so it is cached for a year;
the type is the one checked at import, and ``nosniff`` (set on every answer) stops a browser
from guessing another.
"""

from __future__ import annotations

from aiohttp import web

from syncsvc.db import logo_repo
from syncsvc.web.keys import SERVICES

#: A year: the address changes whenever the image does.
CACHE_SECONDS = 365 * 24 * 3600


async def logo(request: web.Request) -> web.Response:
    """One stored logo, with its checked type; 404 for a digest no tenant shows."""
    sha256 = request.match_info["sha256"]
    etag = f'"{sha256}"'
    async with request.app[SERVICES].sessionmaker() as session:
        found = await logo_repo.get_logo(session, sha256)
    if found is None:
        raise web.HTTPNotFound(text="No such logo.")
    headers = {
        "Cache-Control": f"public, max-age={CACHE_SECONDS}, immutable",
        "ETag": etag,
        # An image needs nothing else; should it be opened on its own it runs nothing either.
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=found.content, content_type=found.content_type, headers=headers)


def setup_routes(app: web.Application) -> None:
    """Register the logo route."""
    app.router.add_get("/logos/{sha256:[0-9a-f]{64}}", logo)
