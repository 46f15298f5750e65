"""Middlewares: request ids and log context, security headers, and the error boundary."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from syncsvc.connect.links import has_control_characters
from syncsvc.errors import BadRequest, SyncsvcError
from syncsvc.web.keys import SETTINGS

from .problem import problem_from_error, problem_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = structlog.get_logger("syncsvc.web")

#: Every page's policy: no script at all.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self' http: https:; frame-ancestors 'none'; base-uri 'none'"
)
#: The connect page's: the same, and its type-ahead (a script file of this origin, never an
#: inline one, that may fetch from this origin only).
SCRIPT_PAGE_POLICY = f"{CONTENT_SECURITY_POLICY}; script-src 'self'; connect-src 'self'"
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
}


def _wants_html(request: web.Request) -> bool:
    return "text/html" in request.headers.get("Accept", "") and not request.path.startswith("/api/")


@web.middleware
async def context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id to every log line of the request and log one summary line."""
    request_id = request.headers.get("X-Request-Id", "")[:64] or secrets.token_hex(8)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-Id"] = request_id
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        # The path only: query strings carry codes, states and links.
        log.info(
            "request",
            method=request.method,
            path=request.path,
            status=status,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every answer gets them, streamed ones and error pages too."""
    # Pages are never cached: they show patient data.
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Cache-Control", "no-store")
    if request.app[SETTINGS].public_is_https:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")


@web.middleware
async def control_character_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """400 for a control character in a path parameter (an id) or in an API query value."""
    values = list(request.match_info.values())
    if request.path.startswith("/api/"):
        values += request.query.values()
    if any(has_control_characters(v) for v in values):
        raise BadRequest(
            "Ids and parameters must not contain control characters.",
            reason="control_character",
        )
    return await handler(request)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn errors into problem+json; unexpected ones into a 500 that leaks nothing."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or _wants_html(request) or exc.content_type == "text/html":
            raise
        return problem_response(exc.status, exc.reason, reason=exc.reason.lower().replace(" ", "_"))
    except SyncsvcError as exc:
        if exc.status >= 500:
            log.warning("request_failed", reason=exc.reason, error_class=type(exc).__name__)
        return problem_from_error(exc)
    except Exception:
        log.exception("unhandled_error")
        return problem_response(500, "An internal error occurred.", reason="internal_error")
