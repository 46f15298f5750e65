"""The provider picker's type-ahead: its JSON search and its script.

``GET /connect/search?q=…&page=…`` answers what the connect page would list for the same query
(the same search function, the same page, the same order, the same grouping by brand) as JSON.
It is bound to what authorises the connect page: the connect link (``link=``, shown but not used
up) or the patient session its use started; without either it answers 401, and a link for one
provider has nothing to search (403). Each link or session has its own rate (429 with
``Retry-After`` beyond it), so a script cannot walk the directory through it.

``GET /static/picker.js`` serves the one script, read once from the package. Its URL carries the
script's digest (``?v=``): under it the answer may be cached for a year, and the page asks for
the new digest when the script changes; without it the answer is revalidated (ETag).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import orjson
from aiohttp import web

from syncsvc.directory.picker import connected_providers
from syncsvc.web.keys import RATE_LIMITS, SERVICES
from syncsvc.web.picker_view import Refusal, picker_access, search_view
from syncsvc.web.problem import problem_response


@dataclass(frozen=True)
class StaticScript:
    """A script served from the package, with its digest for cache-busting URLs."""

    body: bytes
    digest: str

    @classmethod
    def load(cls, name: str) -> StaticScript:
        """Read ``syncsvc/web/static/<name>``."""
        body = resources.files("syncsvc.web").joinpath("static", name).read_bytes()
        return cls(body, hashlib.sha256(body).hexdigest()[:20])

    @property
    def url(self) -> str:
        """The script's URL under its digest."""
        return f"/static/picker.js?v={self.digest}"


PICKER_SCRIPT = StaticScript.load("picker.js")


async def picker_script(request: web.Request) -> web.Response:
    """The type-ahead script, cacheable under its digest."""
    etag = f'"{PICKER_SCRIPT.digest}"'
    headers = {"ETag": etag}
    if request.query.get("v") == PICKER_SCRIPT.digest:
        headers["Cache-Control"] = "public, max-age=31536000, immutable"
    else:
        headers["Cache-Control"] = "no-cache"
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(
        body=PICKER_SCRIPT.body,
        content_type="text/javascript",
        charset="utf-8",
        headers=headers,
    )


async def picker_search(request: web.Request) -> web.Response:
    """One page of the provider search as JSON, for the connect page's type-ahead."""
    access = await picker_access(request)
    if isinstance(access, Refusal):
        return problem_response(access.status, access.detail, reason=access.reason)
    wait = request.app[RATE_LIMITS].picker_search.take(access.rate_key)
    if wait is not None:
        response = problem_response(
            429,
            f"Too many searches. Wait {wait} seconds, or search with the form.",
            reason="too_many_searches",
            extra={"retry_after": wait},
        )
        response.headers["Retry-After"] = str(wait)
        return response
    sessionmaker = request.app[SERVICES].sessionmaker
    results = await search_view(request, await connected_providers(sessionmaker, access.user_id))
    return web.Response(
        body=orjson.dumps(results.to_json()),
        content_type="application/json",
        # Search answers name the patient's own providers: never cached.
        headers={"Cache-Control": "no-store"},
    )


def setup_routes(app: web.Application) -> None:
    """Register the type-ahead's endpoints."""
    app.router.add_get("/connect/search", picker_search)
    app.router.add_get("/static/picker.js", picker_script)


__all__ = ["PICKER_SCRIPT", "setup_routes"]
