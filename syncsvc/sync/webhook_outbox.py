"""The webhook outbox: an event about a connection, written in the transaction that changes it.

:func:`enqueue` adds a ``webhook_deliveries`` row in the caller's transaction, so an event is
recorded if and only if the state change it reports commits; :mod:`syncsvc.lifecycle.webhooks`
delivers the rows later. Payloads carry ids, statuses and the connection's state in the words its
pages use: never a token, a resource or a patient detail beyond the EHR's patient id.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db.columns import new_id
from syncsvc.db.models.activity import WebhookDelivery
from syncsvc.db.models.connections import Connection, Tenant
from syncsvc.settings import Settings
from syncsvc.sync.grant_states import explain_connection
from syncsvc.vocabulary import WEBHOOK_EVENTS

EVENT_TYPES = WEBHOOK_EVENTS
#: What ``data`` may carry: outcomes, counts and plain-words reasons, never patient data.
ALLOWED_DATA_KEYS = frozenset(
    {
        "run_id",
        "outcome",
        "counts",
        "types",
        "reason",
        "message",
        "error_uri",
        "full",
        "withdrawn",
        "added",
        "narrowed",
        "widened",
        "sentences",
    }
)


class WebhookError(ValueError):
    """An event that cannot be enqueued as asked (unknown type, data that is not allowed)."""


async def enqueue(
    session: AsyncSession,
    settings: Settings,
    event_type: str,
    *,
    connection: Connection,
    data: Mapping[str, Any] | None = None,
    now: dt.datetime | None = None,
) -> WebhookDelivery | None:
    """Record a webhook about ``connection`` in the caller's transaction; None if none is set up.

    The payload is ``{"id", "type", "created_at", "data": {"connection_id", "user_id",
    "tenant_id", "patient_id", "status", "status_reason", "explanation", ...data}}``, where
    ``explanation`` is the connection's state in the words its pages use (read in the caller's
    transaction, so it describes the change being committed).
    """
    if event_type not in EVENT_TYPES:
        raise WebhookError(f"unknown webhook event type {event_type!r}")
    extra = dict(data or {})
    refused = set(extra) - ALLOWED_DATA_KEYS
    if refused:
        raise WebhookError(f"webhook data may not carry {', '.join(sorted(refused))}")
    if settings.webhook_url is None:
        return None
    moment = now or dt.datetime.now(dt.UTC)
    delivery_id = new_id()
    await session.flush()  # the explanation reads what the caller changed
    tenant = await session.get(Tenant, connection.tenant_id)
    explanation = await explain_connection(session, connection, tenant)
    payload = {
        "id": delivery_id,
        "type": event_type,
        "created_at": moment,
        "data": {
            "connection_id": connection.id,
            "user_id": connection.user_id,
            "tenant_id": connection.tenant_id,
            "patient_id": connection.patient_id,
            "status": connection.status,
            "status_reason": connection.status_reason,
            "explanation": explanation.to_json(),
            **extra,
        },
    }
    delivery = WebhookDelivery(
        id=delivery_id,
        event_type=event_type,
        connection_id=connection.id,
        user_id=connection.user_id,
        payload=orjson.dumps(payload),
        attempts=0,
        next_attempt_at=moment,
        created_at=moment,
    )
    session.add(delivery)
    await session.flush()
    return delivery
