"""Credentials at the HTTP edge: host-app API keys and the operator token (``Bearer``)."""

from __future__ import annotations

import hashlib

from aiohttp import web

from syncsvc.errors import Unauthorized
from syncsvc.settings import Secret
from syncsvc.web.keys import SETTINGS


def _bearer(request: web.Request) -> Secret | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return Secret(value.strip())


def _matches(presented: Secret | None, accepted: tuple[Secret, ...]) -> bool:
    if presented is None:
        return False
    # Compare against every key (no early exit) so timing does not tell which one matched.
    results = [presented == key for key in accepted]
    return any(results)


def require_api_key(request: web.Request) -> None:
    """Allow the request only with a configured host-application API key."""
    if not _matches(_bearer(request), request.app[SETTINGS].api_keys):
        raise Unauthorized(
            "A valid API key is required (Authorization: Bearer <key>).", reason="api_key_required"
        )


def api_key_id(request: web.Request) -> str:
    """A stable, non-secret name of the request's API key (call after ``require_api_key``)."""
    presented = _bearer(request)
    secret = presented.reveal() if presented is not None else ""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def require_operator(request: web.Request) -> None:
    """Allow the request only with the operator token."""
    token = request.app[SETTINGS].admin_token
    if token is None or not _matches(_bearer(request), (token,)):
        raise Unauthorized(
            "The operator token is required (Authorization: Bearer <token>).",
            reason="operator_token_required",
        )
