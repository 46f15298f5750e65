"""The OpenAPI paths and schemas of document attachments (``syncsvc.web.openapi`` merges them)."""

from __future__ import annotations

from typing import Any

from syncsvc.fhir.attachments import ALLOWED_TYPES
from syncsvc.vocabulary import ATTACHMENT_ELEMENTS, ATTACHMENT_REASONS, ATTACHMENT_STATES
from syncsvc.web.handlers.attachments_api import ATTACHMENT_EXTENSION, CONTENT_POLICY

Schema = dict[str, Any]

_LISTED = "/api/v1/connections/{connection_id}/attachments"

_STATES = ", ".join(f"`{s}`" for s in ATTACHMENT_STATES)
_REASONS = ", ".join(f"`{r}`" for r in ATTACHMENT_REASONS)

#: What the feed description says about the attachment extension.
FEED_NOTE = f"""**Attachments**: the entry of a DocumentReference or DiagnosticReport carries one
entry extension `{ATTACHMENT_EXTENSION}` per attachment (in `content` or `presentedForm`), with
sub-extensions `position` (its index there), `status` ({_STATES}) and either, when stored,
`content` (the URL of syncsvc's copy: `GET` it with the API key), `contentType`, `size` and
`sha256`, or a `reason`. NDJSON lines are the resources alone: list the attachments with
`GET /api/v1/connections/{{connection_id}}/attachments`."""


def attachment_schemas() -> dict[str, Schema]:
    """The component schemas of attachments."""
    counts = {state: {"type": "integer", "minimum": 0} for state in ATTACHMENT_STATES}
    return {
        "AttachmentSummary": {
            "type": "object",
            "description": (
                "What became of a connection's document attachments: counts by state, the "
                "reasons by state, what is stored, and one sentence (the same on every surface)."
            ),
            "required": [*ATTACHMENT_STATES, "stored_bytes", "stored_contents", "sentence"],
            "properties": {
                **counts,
                "stored_bytes": {
                    "type": "integer",
                    "description": "Bytes of the stored contents (uncompressed, each once).",
                },
                "stored_contents": {
                    "type": "integer",
                    "description": "Distinct contents stored (by SHA-256, within the connection).",
                },
                "reasons": {
                    "type": "object",
                    "description": "By state, the count of each reason.",
                    "additionalProperties": {
                        "type": "object",
                        "additionalProperties": {"type": "integer"},
                    },
                },
                "sentence": {"type": "string"},
                "url": {"type": "string", "description": "Where the attachments are listed."},
            },
        },
        "Attachment": {
            "type": "object",
            "required": ["resource_type", "resource_id", "position", "status"],
            "properties": {
                "resource_type": {"type": "string", "enum": list(ATTACHMENT_ELEMENTS)},
                "resource_id": {"type": "string"},
                "position": {
                    "type": "integer",
                    "description": "Its index in `content` (DocumentReference) or "
                    "`presentedForm` (DiagnosticReport).",
                },
                "status": {"type": "string", "enum": list(ATTACHMENT_STATES)},
                "reason": {"type": ["string", "null"], "enum": [*ATTACHMENT_REASONS, None]},
                "detail": {"type": ["string", "null"]},
                "title": {"type": ["string", "null"]},
                "source_url": {
                    "type": ["string", "null"],
                    "description": "The URL the resource gave (null for inline data).",
                },
                "declared_content_type": {"type": ["string", "null"]},
                "content_type": {"type": ["string", "null"]},
                "size": {"type": ["integer", "null"]},
                "sha256": {"type": ["string", "null"]},
                "content_url": {
                    "type": ["string", "null"],
                    "description": "The stored copy (when `stored`).",
                },
                "updated_at": {"type": "string", "format": "date-time"},
            },
        },
        "AttachmentList": {
            "type": "object",
            "required": ["connection_id", "summary", "attachments"],
            "properties": {
                "connection_id": {"type": "string"},
                "summary": {"$ref": "#/components/schemas/AttachmentSummary"},
                "attachments": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/Attachment"},
                },
            },
        },
    }


def attachment_paths(
    connection_id: Schema, owner_guard: Schema, unauthorized: Schema, not_found: Schema
) -> dict[str, Any]:
    """The paths of attachments, with the shared parameters and answers of the API."""
    kept = ", ".join(f"`{t}`" for t in sorted(ALLOWED_TYPES))
    return {
        _LISTED: {
            "get": {
                "summary": "List a connection's document attachments",
                "operationId": "listAttachments",
                "tags": ["resources"],
                "description": (
                    "Every attachment of the connection's DocumentReference and "
                    "DiagnosticReport resources and what became of it. Attachments are fetched "
                    "after their resources, only under the connection's FHIR base (any other "
                    f"URL is `refused` and never requested); reasons: {_REASONS}. Kept types: "
                    f"{kept}."
                ),
                "parameters": [connection_id, owner_guard],
                "responses": {
                    "200": {
                        "description": "The attachments.",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/AttachmentList"}
                            }
                        },
                    },
                    "401": unauthorized,
                    "404": not_found,
                },
            }
        },
        _LISTED + "/{resource_type}/{resource_id}/{position}": {
            "get": {
                "summary": "Download a stored attachment",
                "operationId": "getAttachment",
                "tags": ["resources"],
                "description": (
                    "The stored copy with the content type it was stored under, as a download "
                    "(`Content-Disposition: attachment`), with `X-Content-Type-Options: "
                    f"nosniff` and `Content-Security-Policy: {CONTENT_POLICY}`. `ETag` is the "
                    "content's SHA-256."
                ),
                "parameters": [
                    connection_id,
                    {
                        "name": "resource_type",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": list(ATTACHMENT_ELEMENTS)},
                    },
                    {
                        "name": "resource_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[A-Za-z0-9.-]{1,64}$"},
                    },
                    {
                        "name": "position",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 0, "maximum": 999},
                    },
                    owner_guard,
                ],
                "responses": {
                    "200": {
                        "description": "The content.",
                        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "304": {"description": "Unchanged (`If-None-Match` named its ETag)."},
                    "401": unauthorized,
                    "404": not_found,
                },
            }
        },
    }
