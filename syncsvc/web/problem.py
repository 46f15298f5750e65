"""RFC 9457 problem details: the one shape every API error takes.

Only :class:`~syncsvc.errors.SyncsvcError` messages reach a client; they are written to be safe to
show. Anything else becomes a generic 500 that leaks nothing of what went wrong upstream.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from syncsvc.errors import RateLimited, SyncsvcError

PROBLEM_JSON = "application/problem+json"
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def problem_response(
    status: int, detail: str, *, reason: str, extra: dict[str, Any] | None = None
) -> web.Response:
    """A problem+json response."""
    body: dict[str, Any] = {
        "type": f"https://syncsvc.dev/problems/{reason}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "reason": reason,
    }
    if extra:
        body.update(extra)
    response = web.Response(status=status, body=orjson.dumps(body), content_type=PROBLEM_JSON)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="syncsvc"'
    return response


def problem_from_error(error: SyncsvcError) -> web.Response:
    """The problem response for a deliberate syncsvc error."""
    if isinstance(error, RateLimited):
        response = problem_response(
            error.status,
            error.message,
            reason=error.reason,
            extra={"retry_after": error.retry_after},
        )
        response.headers["Retry-After"] = str(error.retry_after)
        return response
    return problem_response(error.status, error.message, reason=error.reason)
