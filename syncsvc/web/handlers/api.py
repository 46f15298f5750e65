"""The host-application API (``/api/v1``): JSON in, JSON out, API-key authentication."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
from aiohttp import web

from syncsvc.connect.links import has_control_characters, issue_connect_link
from syncsvc.errors import BadRequest, RateLimited
from syncsvc.http import BodyTooLarge, read_body
from syncsvc.web.auth import api_key_id, require_api_key
from syncsvc.web.keys import RATE_LIMITS, SERVICES, SETTINGS, SIGNER

MAX_JSON_BYTES = 64 * 1024


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body, or BadRequest saying what is wrong with it."""
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        raise BadRequest("The request body is too large.", reason="body_too_large")
    try:
        raw = await read_body(request.content, MAX_JSON_BYTES)
    except BodyTooLarge as exc:
        raise BadRequest("The request body is too large.", reason="body_too_large") from exc
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as exc:
        raise BadRequest("The request body is not valid JSON.", reason="invalid_json") from exc
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.", reason="invalid_json")
    return body


def json_response(payload: Any, *, status: int = 200) -> web.Response:
    """A JSON response serialised with orjson (datetimes as RFC 3339)."""
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


async def create_connect_link(request: web.Request) -> web.Response:
    """``POST /api/v1/connect-links``: a signed, expiring, single-use link for one user."""
    require_api_key(request)
    wait = request.app[RATE_LIMITS].link_creation.take(api_key_id(request))
    if wait is not None:
        raise RateLimited(
            f"Too many connect links for this API key; retry after {wait} seconds.",
            retry_after=wait,
        )
    body = await read_json_object(request)
    tenant = body.get("tenant")
    if tenant is not None and (not isinstance(tenant, str) or has_control_characters(tenant)):
        raise BadRequest("tenant must be a tenant name (string).", reason="invalid_tenant")
    ttl = body.get("ttl_seconds")
    if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool)):
        raise BadRequest("ttl_seconds must be an integer.", reason="invalid_ttl")
    async with request.app[SERVICES].sessionmaker.begin() as session:
        link = await issue_connect_link(
            session,
            request.app[SIGNER],
            request.app[SETTINGS],
            user_id=body.get("user_id"),  # type: ignore[arg-type]  # validated inside
            tenant_name=tenant,
            now=dt.datetime.now(dt.UTC),
            ttl_seconds=ttl,
            hint=body.get("hint"),  # validated inside
        )
    return json_response(
        {
            "url": link.url,
            "link_id": link.link_id,
            "user_id": link.user_id,
            "tenant": link.tenant,
            "expires_at": link.expires_at,
        },
        status=201,
    )


def setup_routes(app: web.Application) -> None:
    """Register the host-application API."""
    app.router.add_post("/api/v1/connect-links", create_connect_link)
