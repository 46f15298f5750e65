"""The component schemas of the host-application API's OpenAPI document (``#/components``).

The shapes of connections, resources, feeds, problems and webhook events, with the limits and
state names taken from the code that enforces them; ``syncsvc.web.openapi`` refers to them by
:func:`ref`.
"""

from __future__ import annotations

from typing import Any

from syncsvc.connect.links import MAX_LINK_TTL_SECONDS, MAX_USER_ID_LENGTH
from syncsvc.vocabulary import CONNECTION_STATUSES, TYPE_STATES, WEBHOOK_EVENTS

Schema = dict[str, Any]

NULLABLE_TIME: Schema = {"type": ["string", "null"], "format": "date-time"}
NULLABLE_STRING: Schema = {"type": ["string", "null"]}


def ref(name: str) -> Schema:
    """A reference to the component schema ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


def component_schemas() -> dict[str, Any]:
    """The ``components.schemas`` section: every named schema of the API."""
    status_values = list(CONNECTION_STATUSES)
    return {
        "Problem": {
            "type": "object",
            "description": "RFC 9457 problem details.",
            "required": ["type", "title", "status", "detail", "reason"],
            "properties": {
                "type": {"type": "string", "format": "uri"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "reason": {"type": "string", "description": "A stable machine-readable code."},
                "retry_after": {
                    "type": "integer",
                    "description": "Seconds to wait (429 only; also in `Retry-After`).",
                },
            },
        },
        "ConnectLinkRequest": {
            "type": "object",
            "required": ["user_id"],
            "properties": {
                "user_id": {"type": "string", "minLength": 1, "maxLength": MAX_USER_ID_LENGTH},
                "tenant": {
                    "type": ["string", "null"],
                    "description": "A tenant name: skip the provider choice.",
                },
                "ttl_seconds": {
                    "type": ["integer", "null"],
                    "minimum": 1,
                    "maximum": MAX_LINK_TTL_SECONDS,
                },
            },
        },
        "ConnectLink": {
            "type": "object",
            "required": ["url", "link_id", "user_id", "expires_at"],
            "properties": {
                "url": {"type": "string", "format": "uri"},
                "link_id": {"type": "string"},
                "user_id": {"type": "string"},
                "tenant": NULLABLE_STRING,
                "expires_at": {"type": "string", "format": "date-time"},
            },
        },
        "TrimmedScope": {
            "type": "object",
            "required": ["scope", "explanation"],
            "properties": {
                "scope": {"type": "string"},
                "explanation": {"type": "string", "description": "What it means, in plain words."},
            },
        },
        "TypeStatus": {
            "type": "object",
            "required": ["type", "granted", "resources"],
            "properties": {
                "type": {"type": "string"},
                "granted": {"type": "boolean"},
                "status": {"type": ["string", "null"], "enum": [*TYPE_STATES, None]},
                "resources": {"type": "integer", "minimum": 0},
                "last_success_at": NULLABLE_TIME,
                "error_class": NULLABLE_STRING,
                "next_attempt_at": {
                    **NULLABLE_TIME,
                    "description": "When a type in transient_error or failing is tried again.",
                },
                "explanation": {
                    **NULLABLE_STRING,
                    "description": "Why the type is not up to date, in plain words (or null).",
                },
                "sentence": {
                    "type": "string",
                    "description": "The type's state in plain words, as the patient sees it.",
                },
                "parts": {
                    "type": ["array", "null"],
                    "items": {"type": "string"},
                    "description": "The parts of the type the grant shared, as SMART v2 scope "
                    "qualifiers (category=<system>|<code>); null when all of it was shared "
                    "(or none). Sync and completeness cover these parts only.",
                },
                "shared": {
                    **NULLABLE_STRING,
                    "description": 'The same in plain words ("laboratory results only").',
                },
                "unsearchable": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Parts of the type the grant shared that the provider's "
                    "system cannot search, as scope qualifiers: not synced, and not a failure "
                    "(all of the shared parts when the status is unsearchable).",
                },
            },
        },
        "Explanation": {
            "type": "object",
            "required": ["title", "heading", "summary", "sentences", "kept_up_to_date"],
            "description": (
                "The connection's state in the same plain words the patient's pages, the CLI "
                "and the webhooks use."
            ),
            "properties": {
                "title": {"type": "string"},
                "heading": {"type": "string"},
                "summary": {"type": "string"},
                "sentences": {"type": "array", "items": {"type": "string"}},
                "kept_up_to_date": {
                    "type": "boolean",
                    "description": "True only with a refresh token and a readable type.",
                },
                "unsupported_types": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": (
                        "Resource types the provider's system does not offer (or cannot search "
                        "per patient): never asked for or pulled, and not a failure."
                    ),
                },
                "unsearchable_parts": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                    "description": (
                        "Per resource type, the shared parts (scope qualifiers) the provider's "
                        "system cannot search: not synced, and not a failure."
                    ),
                },
            },
        },
        "References": {
            "type": "object",
            "description": (
                "The record's distinct references to Practitioner, PractitionerRole, "
                "Organization, Location and Medication resources, by how they stand. Stored ones "
                "are in the feed under their own type; ones outside the connection's FHIR base "
                "are counted by kind and never fetched."
            ),
            "properties": {
                "granted_types": {"type": "array", "items": {"type": "string"}},
                "stored": {"type": "integer"},
                "missing": {"type": "integer", "description": "404/410 at the EHR."},
                "outside_base": {"type": "integer"},
                "outside_kinds": {
                    "type": "object",
                    "additionalProperties": {"type": "integer"},
                    "description": "other_server, contained, urn, identifier, malformed.",
                },
                "not_granted": {"type": "integer"},
                "denied": {"type": "integer"},
                "waiting": {"type": "integer", "description": "To be read at a later sync."},
                "over_cap": {"type": "integer"},
                "resolved_at": NULLABLE_TIME,
                "sentence": {
                    "type": ["string", "null"],
                    "description": "The same sentence the patient's page and the CLI show.",
                },
            },
        },
        "Connection": {
            "type": "object",
            "required": ["id", "user_id", "tenant", "patient_id", "status", "scopes"],
            "properties": {
                "id": {"type": "string"},
                "user_id": {"type": "string"},
                "tenant": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "display_name": {"type": "string"}},
                },
                "patient_id": {"type": "string", "description": "The EHR's patient id."},
                "status": {"type": "string", "enum": status_values},
                "status_reason": NULLABLE_STRING,
                "status_message": NULLABLE_STRING,
                "explanation": ref("Explanation"),
                "error_uri": {
                    "type": ["string", "null"],
                    "description": "A page from the EHR about the error (e.g. an approval link).",
                },
                "scopes": {
                    "type": "object",
                    "properties": {
                        "requested": {"type": "array", "items": {"type": "string"}},
                        "granted": {"type": "array", "items": {"type": "string"}},
                        "trimmed": {"type": "array", "items": ref("TrimmedScope")},
                        "offline_access": {"type": "boolean"},
                        "ignored": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "Granted scopes that break the SMART scope grammar: "
                            "they grant nothing.",
                        },
                    },
                },
                "synced_types": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Resource types the granted scopes let syncsvc read.",
                },
                "types": {"type": "array", "items": ref("TypeStatus")},
                "resource_counts": {
                    "type": "object",
                    "additionalProperties": {"type": "integer"},
                    "description": "Live (not deleted) resources per type.",
                },
                "references": {"oneOf": [ref("References"), {"type": "null"}]},
                "attachments": ref("AttachmentSummary"),
                "connected_at": NULLABLE_TIME,
                "last_sync_at": NULLABLE_TIME,
                "last_success_at": NULLABLE_TIME,
                "next_sync_at": NULLABLE_TIME,
            },
        },
        "ConnectionList": {
            "type": "object",
            "required": ["user_id", "connections"],
            "properties": {
                "user_id": {"type": "string"},
                "connections": {"type": "array", "items": ref("Connection")},
            },
        },
        "SyncAccepted": {
            "type": "object",
            "required": ["id", "status", "next_sync_at"],
            "properties": {
                "id": {"type": "string"},
                "status": {"type": "string", "const": "active"},
                "next_sync_at": {"type": "string", "format": "date-time"},
            },
        },
        "Bundle": {
            "type": "object",
            "description": "A FHIR R4 searchset Bundle (see the feed's description).",
            "required": ["resourceType", "type", "entry"],
            "properties": {
                "resourceType": {"const": "Bundle"},
                "type": {"const": "searchset"},
                "timestamp": {"type": "string", "format": "date-time"},
                "link": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"relation": {"type": "string"}, "url": {"type": "string"}},
                    },
                },
                "entry": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["fullUrl", "resource"],
                        "properties": {
                            "fullUrl": {"type": "string"},
                            "resource": {"type": "object"},
                            "search": {"type": "object"},
                            "extension": {"type": "array"},
                        },
                    },
                },
            },
        },
        "WebhookEvent": {
            "type": "object",
            "required": ["id", "type", "created_at", "data"],
            "properties": {
                "id": {"type": "string", "description": "Also `Syncsvc-Delivery`: deduplicate."},
                "type": {
                    "type": "string",
                    "enum": list(WEBHOOK_EVENTS),
                },
                "created_at": {"type": "string", "format": "date-time"},
                "data": {
                    "type": "object",
                    "required": ["connection_id", "user_id", "status"],
                    "properties": {
                        "connection_id": {"type": "string"},
                        "user_id": {"type": "string"},
                        "tenant_id": {"type": "string"},
                        "patient_id": {"type": "string"},
                        "status": {"type": "string", "enum": status_values},
                        "status_reason": NULLABLE_STRING,
                        "run_id": {"type": "string"},
                        "outcome": {"type": "string"},
                        "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
                        "types": {
                            "type": "object",
                            "description": "sync.completed: each pulled type's status "
                            "(ok, denied, error, transient_error, failing, skipped; a type the "
                            "provider does not offer is not pulled: see "
                            "explanation.unsupported_types), its error "
                            "class and, for a type retried on its own schedule, the next attempt.",
                            "additionalProperties": {
                                "type": "object",
                                "properties": {
                                    "status": {"type": "string"},
                                    "error_class": NULLABLE_STRING,
                                    "next_attempt_at": NULLABLE_TIME,
                                },
                            },
                        },
                        "message": NULLABLE_STRING,
                        "error_uri": NULLABLE_STRING,
                        "explanation": ref("Explanation"),
                        "withdrawn": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "connection.scopes_changed: types no longer granted.",
                        },
                        "added": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "connection.scopes_changed: types newly granted.",
                        },
                        "narrowed": {
                            "type": "object",
                            "additionalProperties": {"type": "array", "items": {"type": "string"}},
                            "description": "connection.scopes_changed: per type still granted, "
                            "the parts no longer granted (scope qualifiers; * for the rest of "
                            "a type granted whole before).",
                        },
                        "widened": {
                            "type": "object",
                            "additionalProperties": {"type": "array", "items": {"type": "string"}},
                            "description": "connection.scopes_changed: per type granted before, "
                            "the parts newly granted (* for the whole type).",
                        },
                    },
                },
            },
        },
    }
