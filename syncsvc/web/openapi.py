"""The OpenAPI 3.1 document of the host-application API, served at ``GET /openapi.json``.

Written by hand, next to the handlers it describes; a test checks that every ``/api/v1`` route
the application registers appears here with its method. Webhooks are described in the
document's ``webhooks`` section (OpenAPI 3.1). This module holds the paths and webhooks; the
component schemas they refer to are in ``openapi_schemas``.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from syncsvc.connect.links import MAX_USER_ID_LENGTH
from syncsvc.lifecycle.webhooks import MAX_ATTEMPTS, SIGNATURE_HEADER
from syncsvc.vocabulary import WEBHOOK_EVENTS
from syncsvc.web.cursors import MAX_CURSOR_LENGTH
from syncsvc.web.handlers.data_api import (
    CONNECTION_EXTENSION,
    CURSOR_EXTENSION,
    DEFAULT_LIMIT,
    DELETED_EXTENSION,
    MAX_LIMIT,
)
from syncsvc.web.keys import SETTINGS
from syncsvc.web.openapi_attachments import FEED_NOTE, attachment_paths, attachment_schemas
from syncsvc.web.openapi_schemas import (
    Schema,
    component_schemas,
    ref,
)

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1"


def _problem(description: str) -> Schema:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": ref("Problem")}},
    }


def _json(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_UNAUTHORIZED = _problem("No valid API key (`Authorization: Bearer <key>`).")
_NOT_FOUND = _problem(
    "No such connection. A connection that exists but belongs to another user (with `user_id`) "
    "gets the same answer."
)
_BAD_REQUEST = _problem("A malformed parameter or body; `reason` says which.")

_CONNECTION_ID: Schema = {
    "name": "connection_id",
    "in": "path",
    "required": True,
    "description": "The connection id.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 64},
}
_USER_ID: Schema = {
    "name": "user_id",
    "in": "path",
    "required": True,
    "description": "The host application's user id.",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_USER_ID_LENGTH},
}
_OWNER_GUARD: Schema = {
    "name": "user_id",
    "in": "query",
    "required": False,
    "description": (
        "When given, the connection must belong to this user, else 404: lets the host "
        "application have syncsvc check ownership."
    ),
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_USER_ID_LENGTH},
}

_FEED_PARAMETERS: list[Schema] = [
    {
        "name": "type",
        "in": "query",
        "required": False,
        "description": (
            "Only these resource types: repeat the parameter or separate names with commas. "
            "With `since`, it must match the cursor's filter (or be left out)."
        ),
        "style": "form",
        "explode": True,
        "schema": {
            "type": "array",
            "maxItems": 50,
            "items": {"type": "string", "pattern": "^[A-Z][A-Za-z]{0,63}$"},
        },
    },
    {
        "name": "since",
        "in": "query",
        "required": False,
        "description": (
            "An opaque cursor from `X-Next-Cursor` (or the Bundle's `next` link): returns what "
            "changed or was deleted after it. Cursors are signed and bound to the feed they "
            "came from; any other value is a 400 `invalid_cursor`. They do not expire."
        ),
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_CURSOR_LENGTH},
    },
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": "Resources per page.",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    },
    {
        "name": "format",
        "in": "query",
        "required": False,
        "description": (
            "`bundle` (a FHIR searchset Bundle) or `ndjson` (one resource per line). Without "
            "it, `Accept: application/x-ndjson` (or `application/fhir+ndjson`) chooses NDJSON."
        ),
        "schema": {"type": "string", "enum": ["bundle", "ndjson"], "default": "bundle"},
    },
]

_FEED_DESCRIPTION = f"""A change feed of synced FHIR resources, in a stable order: by connection
id, then by `seq`, which grows on every insert, change and deletion within a connection. Read
from the beginning without `since`; keep the `X-Next-Cursor` of every response and pass it as
`since` to get only what changed or was deleted afterwards. `X-Has-More: true` (and a `Link:
rel="next"` header and Bundle `next` link) means another page is available now.

**Deletions** come as tombstones in both formats: a resource with only `resourceType`, `id` and
`meta` whose `meta.extension` holds `{{"url": "{DELETED_EXTENSION}", "valueCode": "vanished" |
"entered-in-error"}}` and whose `meta.lastUpdated` is when syncsvc saw the deletion. (A searchset
Bundle may not carry `request`/`response` entries, so deletions are resources too.)

**Bundle**: `type` `searchset`; each entry has `fullUrl` (the resource's URL at its EHR),
`search.mode` `match`, an entry extension `{CONNECTION_EXTENSION}` naming the connection,
and `resource` (the stored JSON exactly as synced). The cursor is also in `meta.extension`
`{CURSOR_EXTENSION}`.

**NDJSON**: one resource (or tombstone) per line; the connection is not named per line, so read
per connection when that matters. Responses are streamed.

{FEED_NOTE}"""


def _feed_operation(summary: str, operation_id: str, scope_parameters: list[Schema]) -> Schema:
    return {
        "summary": summary,
        "operationId": operation_id,
        "tags": ["resources"],
        "description": _FEED_DESCRIPTION,
        "parameters": [*scope_parameters, *_FEED_PARAMETERS],
        "responses": {
            "200": {
                "description": "One page of the feed.",
                "headers": {
                    "X-Next-Cursor": {
                        "description": "The cursor to pass as `since` next time.",
                        "schema": {"type": "string"},
                    },
                    "X-Has-More": {
                        "description": "`true` when another page is available now.",
                        "schema": {"type": "string", "enum": ["true", "false"]},
                    },
                    "Link": {
                        "description": '`<url>; rel="next"` when another page is available now.',
                        "schema": {"type": "string"},
                    },
                },
                "content": {
                    "application/fhir+json": {"schema": ref("Bundle")},
                    "application/x-ndjson": {
                        "schema": {"type": "string", "description": "One JSON resource per line."}
                    },
                },
            },
            "400": _BAD_REQUEST,
            "401": _UNAUTHORIZED,
            "404": _NOT_FOUND,
        },
    }


def _paths() -> dict[str, Any]:
    return {
        "/api/v1/connect-links": {
            "post": {
                "summary": "Issue a connect link for one user",
                "operationId": "createConnectLink",
                "tags": ["connections"],
                "description": (
                    "A signed, expiring, single-use link to send the user to. It opens the "
                    "provider choice (or goes straight to `tenant`)."
                ),
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref("ConnectLinkRequest")}},
                },
                "responses": {
                    "201": _json("The link.", ref("ConnectLink")),
                    "400": _BAD_REQUEST,
                    "401": _UNAUTHORIZED,
                    "429": {
                        **_problem(
                            "Too many links for this API key at once; `Retry-After` says when "
                            "to try again."
                        ),
                        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                    },
                },
            }
        },
        "/api/v1/users/{user_id}/connections": {
            "get": {
                "summary": "List a user's connections",
                "operationId": "listUserConnections",
                "tags": ["connections"],
                "parameters": [_USER_ID],
                "responses": {
                    "200": _json("The user's connections, oldest first.", ref("ConnectionList")),
                    "400": _BAD_REQUEST,
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/api/v1/users/{user_id}/resources": {
            "get": _feed_operation(
                "Read a user's resources across their connections",
                "listUserResources",
                [_USER_ID],
            )
        },
        "/api/v1/connections/{connection_id}": {
            "get": {
                "summary": "Show one connection",
                "operationId": "getConnection",
                "tags": ["connections"],
                "parameters": [_CONNECTION_ID, _OWNER_GUARD],
                "responses": {
                    "200": _json("The connection.", ref("Connection")),
                    "401": _UNAUTHORIZED,
                    "404": _NOT_FOUND,
                },
            },
            "delete": {
                "summary": "Disconnect",
                "operationId": "deleteConnection",
                "tags": ["connections"],
                "description": (
                    "Revokes the grant at the EHR (RFC 7009) when it offers revocation, deletes "
                    "the tokens at once and, unless `erase=false`, erases the synced data. If the "
                    "EHR is down the tokens are still deleted and the revocation is retried."
                ),
                "parameters": [
                    _CONNECTION_ID,
                    {
                        "name": "erase",
                        "in": "query",
                        "required": False,
                        "description": "`false` keeps the synced resources.",
                        "schema": {"type": "boolean", "default": True},
                    },
                ],
                "responses": {
                    "204": {"description": "Disconnected."},
                    "400": _BAD_REQUEST,
                    "401": _UNAUTHORIZED,
                    "404": _NOT_FOUND,
                },
            },
        },
        "/api/v1/connections/{connection_id}/sync": {
            "post": {
                "summary": "Sync a connection now",
                "operationId": "syncConnection",
                "tags": ["connections"],
                "description": (
                    "Makes an active connection due now; a worker picks it up on its next tick "
                    "(unless the EHR asked syncsvc to back off). `sync.completed` follows."
                ),
                "parameters": [_CONNECTION_ID, _OWNER_GUARD],
                "responses": {
                    "202": _json("Queued.", ref("SyncAccepted")),
                    "401": _UNAUTHORIZED,
                    "404": _NOT_FOUND,
                    "409": _problem(
                        "The connection is not active (`reason`: `connection_not_active`): the "
                        "patient must reconnect, or the operator must fix the tenant."
                    ),
                },
            }
        },
        "/api/v1/connections/{connection_id}/resources": {
            "get": _feed_operation(
                "Read one connection's resources",
                "listConnectionResources",
                [_CONNECTION_ID, _OWNER_GUARD],
            )
        },
        **attachment_paths(_CONNECTION_ID, _OWNER_GUARD, _UNAUTHORIZED, _NOT_FOUND),
    }


_WEBHOOK_SUMMARIES = {
    "sync.completed": "A sync run of a connection finished",
    "connection.needs_reauth": "A connection needs the patient to reconnect",
    "connection.misbound": "A connection's token is not valid for its tenant",
    "connection.no_access": "A connection's grant lets syncsvc read no resource type",
    "connection.scopes_changed": (
        "A refresh narrowed or widened a connection's grant (`withdrawn`, `added` types)"
    ),
}


def _webhook(summary: str) -> Schema:
    return {
        "post": {
            "summary": summary,
            "description": (
                f"POSTed to the configured `webhook_url` with `{SIGNATURE_HEADER}: t=<unix "
                "seconds>,v1=<hex>`: HMAC-SHA256 with the webhook secret over `<t>.` followed "
                "by the raw body. Verify it in constant time and reject an old `t`. Any 2xx "
                "acknowledges; anything else (or no answer in 15 s) is retried with exponential "
                f"backoff and jitter (a `Retry-After` is honoured), up to {MAX_ATTEMPTS} "
                "attempts. Delivery is at least once: deduplicate by `id`."
            ),
            "parameters": [
                {
                    "name": SIGNATURE_HEADER,
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string"},
                },
                {
                    "name": "Syncsvc-Event",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string"},
                },
                {
                    "name": "Syncsvc-Delivery",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string"},
                },
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ref("WebhookEvent")}},
            },
            "responses": {"2XX": {"description": "Acknowledged."}},
        }
    }


def build_document(server_url: str) -> dict[str, Any]:
    """The OpenAPI document, with ``server_url`` as its server."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "syncsvc host-application API",
            "version": API_VERSION,
            "description": (
                "Connect a user's EHR records once (SMART on FHIR, offline access), then read "
                "what was synced. Every `/api/v1` call needs an API key as a bearer token. "
                "Errors are `application/problem+json`."
            ),
        },
        "servers": [{"url": server_url}],
        "security": [{"apiKey": []}],
        "tags": [{"name": "connections"}, {"name": "resources"}],
        "paths": _paths(),
        "webhooks": {event: _webhook(_WEBHOOK_SUMMARIES[event]) for event in WEBHOOK_EVENTS},
        "components": {
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A host-application API key (`SYNCSVC_API_KEYS`).",
                }
            },
            "schemas": component_schemas() | attachment_schemas(),
        },
    }


async def openapi_json(request: web.Request) -> web.Response:
    """``GET /openapi.json``: the document (public: it holds no data)."""
    document = build_document(request.app[SETTINGS].public_url)
    return web.Response(body=orjson.dumps(document), content_type="application/json")


def setup_routes(app: web.Application) -> None:
    """Register ``GET /openapi.json``."""
    app.router.add_get("/openapi.json", openapi_json)
