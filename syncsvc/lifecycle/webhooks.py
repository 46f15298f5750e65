"""Webhooks to the host application: an outbox, signed deliveries, retries with backoff.

:func:`syncsvc.sync.webhook_outbox.enqueue` writes a ``webhook_deliveries`` row in the caller's
transaction, so an event is recorded if and only if the state change it reports commits; this
module delivers them. :func:`deliver_due` claims due rows
with a lease (tx 1), POSTs each one with no transaction open, and records the outcome (tx 2); a
failed delivery is retried on :data:`WEBHOOK_BACKOFF` until :data:`MAX_ATTEMPTS`, then given up
with ``last_error`` kept. A crashed worker's lease expires and another takes the row over, so
delivery is at least once: receivers deduplicate by the ``Syncsvc-Delivery`` id (also ``id`` in
the body).

Each request carries ``Syncsvc-Signature: t=<unix seconds>,v1=<hex>``, where ``<hex>`` is
HMAC-SHA256 with the webhook secret over ``<t>.`` followed by the exact body bytes (the scheme
Stripe uses). Receivers recompute it, compare in constant time and reject a ``t`` older than a
few minutes (:func:`verify_signature` does all three). Payloads carry ids and statuses only:
never a token, a resource or a patient detail beyond the EHR's patient id.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from sqlalchemy import and_, update
from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db.leases import claim_rows, lease_free
from syncsvc.db.models.activity import WebhookDelivery
from syncsvc.http import create_webhook_client, describe_network_error
from syncsvc.logging import get_logger
from syncsvc.sync.backoff import Backoff
from syncsvc.sync.context import SyncContext

log = get_logger("syncsvc.lifecycle.webhooks")

SIGNATURE_HEADER = "Syncsvc-Signature"
EVENT_HEADER = "Syncsvc-Event"
DELIVERY_HEADER = "Syncsvc-Delivery"
#: Attempts before a delivery is given up (about a day and a half at the backoff's cap).
MAX_ATTEMPTS = 12
WEBHOOK_BACKOFF = Backoff(base_seconds=10.0, cap_seconds=6 * 3600.0)
LEASE_SECONDS = 60
DEFAULT_BATCH = 50
#: Seconds a receiver should accept between ``t`` and its own clock.
SIGNATURE_TOLERANCE_SECONDS = 300
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=15, connect=5)
ERROR_LENGTH = 500


def webhook_url_allowed(url: str) -> bool:
    """Whether ``url`` may receive webhooks: https, or plain http to a loopback address."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    if parts.scheme != "http":
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname or "").is_loopback
    except ValueError:
        return False


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``Syncsvc-Signature`` header value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify_signature(
    secret: str,
    header: str,
    body: bytes,
    *,
    now: dt.datetime,
    tolerance_seconds: int = SIGNATURE_TOLERANCE_SECONDS,
) -> bool:
    """Whether ``header`` is a valid, fresh signature of ``body`` (what a receiver checks)."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        timestamp = int(fields.get("t", [""])[0])
    except ValueError:
        return False
    if abs(now.timestamp() - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret, body, timestamp).partition(",v1=")[2]
    # Several v1 values are allowed, so a sender can sign with an old and a new secret.
    return any(hmac.compare_digest(expected, value) for value in fields.get("v1", []))


@dataclass
class DeliveryReport:
    """What one :func:`deliver_due` call did."""

    delivered: int = 0
    failed: int = 0
    given_up: int = 0
    errors: list[str] = field(default_factory=list)


def _due(now: dt.datetime) -> Any:
    return and_(
        WebhookDelivery.delivered_at.is_(None),
        WebhookDelivery.next_attempt_at.is_not(None),
        WebhookDelivery.next_attempt_at <= now,
        lease_free(WebhookDelivery.lease_until, now),
    )


async def claim_due(
    session: AsyncSession, owner: str, now: dt.datetime, limit: int
) -> list[WebhookDelivery]:
    """Lease up to ``limit`` due deliveries to ``owner`` (the lease is the claim; commit soon)."""
    return await claim_rows(
        session,
        WebhookDelivery,
        WebhookDelivery.id,
        claimable=_due(now),
        order_by=(WebhookDelivery.next_attempt_at, WebhookDelivery.id),
        owner=owner,
        now=now,
        lease_seconds=LEASE_SECONDS,
        limit=limit,
    )


@dataclass(frozen=True)
class _Outcome:
    ok: bool
    status: int | None
    error: str | None
    retry_after: float | None = None


def _retry_after(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


async def _post(
    http: aiohttp.ClientSession, ctx: SyncContext, url: str, secret: str, delivery: WebhookDelivery
) -> _Outcome:
    timestamp = int(ctx.now().timestamp())
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, delivery.payload, timestamp),
        EVENT_HEADER: delivery.event_type,
        DELIVERY_HEADER: delivery.id,
    }
    try:
        async with http.post(
            url,
            data=delivery.payload,
            headers=headers,
            timeout=REQUEST_TIMEOUT,
            allow_redirects=False,
        ) as response:
            if 200 <= response.status < 300:
                return _Outcome(True, response.status, None)
            retry_after = (
                _retry_after(response.headers.get("Retry-After"))
                if response.status in (429, 503)
                else None
            )
            # The receiver's body is not kept: it is not ours to store.
            return _Outcome(False, response.status, f"HTTP {response.status}", retry_after)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return _Outcome(False, None, describe_network_error(exc)[:ERROR_LENGTH])


async def _record(
    ctx: SyncContext, delivery: WebhookDelivery, outcome: _Outcome, report: DeliveryReport
) -> None:
    now = ctx.now()
    attempts = delivery.attempts + 1
    values: dict[str, Any] = {
        "attempts": attempts,
        "last_status": outcome.status,
        "last_error": outcome.error,
        "lease_owner": None,
        "lease_until": None,
    }
    if outcome.ok:
        values |= {"delivered_at": now, "next_attempt_at": None}
        report.delivered += 1
    elif attempts >= MAX_ATTEMPTS:
        values["next_attempt_at"] = None
        report.given_up += 1
        log.warning(
            "webhook given up",
            delivery_id=delivery.id,
            event_type=delivery.event_type,
            attempts=attempts,
            error=outcome.error,
        )
    else:
        values["next_attempt_at"] = WEBHOOK_BACKOFF.retry_at(
            now, attempts, retry_after=outcome.retry_after
        )
        report.failed += 1
    if outcome.error:
        report.errors.append(outcome.error)
    async with ctx.sessionmaker.begin() as session:
        # Only the lease holder writes; a taken-over lease means someone else now owns the row.
        await session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery.id, WebhookDelivery.lease_owner == ctx.owner)
            .values(**values)
            .execution_options(synchronize_session=False)
        )


async def deliver_due(ctx: SyncContext, limit: int = DEFAULT_BATCH) -> DeliveryReport:
    """Deliver up to ``limit`` due webhooks; never raises for a receiver's trouble."""
    report = DeliveryReport()
    settings = ctx.settings
    if settings.webhook_url is None or settings.webhook_secret is None:
        return report
    if not webhook_url_allowed(settings.webhook_url):  # pragma: no cover - settings refuse it
        log.error("webhook url refused: https, or http on loopback only")
        return report
    async with ctx.sessionmaker.begin() as session:
        batch = await claim_due(session, ctx.owner, ctx.now(), limit)
    if batch:
        # The operator chose this receiver; it may be a name inside their network. Never the EHR
        # client (ctx.http): its pool must not hold a connection to an internal receiver.
        async with AsyncExitStack() as stack:
            http = ctx.webhook_http
            if http is None:
                http = await stack.enter_async_context(create_webhook_client())
            for delivery in batch:
                secret = settings.webhook_secret.reveal()
                outcome = await _post(http, ctx, settings.webhook_url, secret, delivery)
                await _record(ctx, delivery, outcome, report)
    if batch:
        log.info(
            "webhooks delivered",
            delivered=report.delivered,
            failed=report.failed,
            given_up=report.given_up,
        )
    return report
