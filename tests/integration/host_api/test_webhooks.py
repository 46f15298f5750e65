"""Webhook delivery over real HTTP to a loopback receiver: signed, retried with backoff, given up.

Time moves by the context's clock, never by sleeping: each ``deliver_due`` call is one tick.
"""

from __future__ import annotations

import datetime as dt
import socket
from dataclasses import dataclass

import aiohttp
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db.models.activity import WebhookDelivery
from syncsvc.lifecycle import webhooks
from syncsvc.settings import Secret, Settings
from syncsvc.sync import webhook_outbox
from syncsvc.sync.context import SyncContext
from syncsvc.vault import Vault
from tests.integration.dbdata import add_connection, add_tenant
from tests.integration.host_api.conftest import Receiver

SECRET = "whsec-test"


@dataclass
class Clock:
    """A clock the test moves."""

    now: dt.datetime

    def __call__(self) -> dt.datetime:
        return self.now


def _context(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    http: aiohttp.ClientSession,
    clock: Clock,
    url: str,
) -> SyncContext:
    configured = settings.replace(webhook_url=url, webhook_secret=Secret(SECRET))
    return SyncContext(
        settings=configured,
        sessionmaker=sessionmaker,
        vault=Vault.from_settings(configured),
        http=http,
        clock=clock,
    )


async def _row(sessionmaker: async_sessionmaker[AsyncSession], row_id: str) -> WebhookDelivery:
    async with sessionmaker() as session:
        row = await session.get(WebhookDelivery, row_id)
        assert row is not None
        return row


async def test_signed_delivery_retried_until_the_receiver_answers(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    http: aiohttp.ClientSession,
    receiver: Receiver,
) -> None:
    receiver.failures = 2
    clock = Clock(dt.datetime.now(dt.UTC))
    ctx = _context(settings, sessionmaker, http, clock, receiver.url)
    async with sessionmaker.begin() as session:
        tenant = await add_tenant(session)
        connection = await add_connection(session, tenant, user_id="user-a", patient_id="p-1")
        delivery = await webhook_outbox.enqueue(
            session,
            ctx.settings,
            "sync.completed",
            connection=connection,
            data={"run_id": "run-1", "outcome": "ok", "counts": {"new": 3}},
            now=clock.now,
        )
    assert delivery is not None

    first = await webhooks.deliver_due(ctx)
    assert (first.delivered, first.failed) == (0, 1)
    row = await _row(sessionmaker, delivery.id)
    assert row.attempts == 1
    assert row.last_status == 500
    assert row.last_error == "HTTP 500"
    assert row.lease_owner is None
    assert row.next_attempt_at is not None
    assert row.next_attempt_at > clock.now
    # Not due yet: nothing is sent.
    assert (await webhooks.deliver_due(ctx)).failed == 0
    assert len(receiver.received) == 1

    clock.now = row.next_attempt_at
    second = await webhooks.deliver_due(ctx)
    assert second.failed == 1
    row = await _row(sessionmaker, delivery.id)
    assert row.next_attempt_at is not None
    clock.now = row.next_attempt_at
    third = await webhooks.deliver_due(ctx)
    assert third.delivered == 1
    row = await _row(sessionmaker, delivery.id)
    assert row.delivered_at == clock.now
    assert row.attempts == 3
    assert row.next_attempt_at is None
    assert row.last_error is None

    assert len(receiver.received) == 3
    headers, body = receiver.received[-1]
    assert body == receiver.received[0][1] == row.payload
    assert headers["Syncsvc-Event"] == "sync.completed"
    assert headers["Syncsvc-Delivery"] == delivery.id
    assert headers["Content-Type"] == "application/json"
    assert webhooks.verify_signature(SECRET, headers["Syncsvc-Signature"], body, now=clock.now)
    assert not webhooks.verify_signature("other", headers["Syncsvc-Signature"], body, now=clock.now)
    payload = orjson.loads(body)
    assert payload["id"] == delivery.id
    assert payload["type"] == "sync.completed"
    # The connection's state in the words of its pages (no tokens are stored for it here).
    explanation = payload["data"].pop("explanation")
    assert explanation["kept_up_to_date"] is False
    assert explanation["title"] == "Connected until your provider's access expires"
    assert payload["data"] == {
        "connection_id": connection.id,
        "user_id": "user-a",
        "tenant_id": tenant.id,
        "patient_id": "p-1",
        "status": "active",
        "status_reason": None,
        "run_id": "run-1",
        "outcome": "ok",
        "counts": {"new": 3},
    }
    assert (await webhooks.deliver_due(ctx)).delivered == 0


async def test_gives_up_after_the_last_attempt(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    http: aiohttp.ClientSession,
    receiver: Receiver,
) -> None:
    receiver.failures = webhooks.MAX_ATTEMPTS + 5
    receiver.status_on_failure = 503
    clock = Clock(dt.datetime.now(dt.UTC))
    ctx = _context(settings, sessionmaker, http, clock, receiver.url)
    async with sessionmaker.begin() as session:
        connection = await add_connection(session, await add_tenant(session))
        delivery = await webhook_outbox.enqueue(
            session, ctx.settings, "connection.needs_reauth", connection=connection, now=clock.now
        )
    assert delivery is not None
    given_up = 0
    for _ in range(webhooks.MAX_ATTEMPTS):
        report = await webhooks.deliver_due(ctx)
        given_up += report.given_up
        row = await _row(sessionmaker, delivery.id)
        if row.next_attempt_at is None:
            break
        clock.now = row.next_attempt_at
    assert given_up == 1
    row = await _row(sessionmaker, delivery.id)
    assert row.attempts == webhooks.MAX_ATTEMPTS
    assert row.delivered_at is None
    assert row.last_error == "HTTP 503"
    assert len(receiver.received) == webhooks.MAX_ATTEMPTS
    clock.now += dt.timedelta(days=30)
    assert (await webhooks.deliver_due(ctx)).failed == 0


async def test_unreachable_receiver_and_leases(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    http: aiohttp.ClientSession,
) -> None:
    # A port nobody listens on: bind, read the port, close.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hooks"
    sock.close()
    clock = Clock(dt.datetime.now(dt.UTC))
    ctx = _context(settings, sessionmaker, http, clock, url)
    async with sessionmaker.begin() as session:
        connection = await add_connection(session, await add_tenant(session))
        delivery = await webhook_outbox.enqueue(
            session, ctx.settings, "connection.misbound", connection=connection, now=clock.now
        )
        assert delivery is not None
    # Another worker holds the row: this one leaves it alone until the lease expires.
    async with sessionmaker.begin() as session:
        claimed = await webhooks.claim_due(session, "other-worker", clock.now, 10)
    assert [row.id for row in claimed] == [delivery.id]
    assert (await webhooks.deliver_due(ctx)).failed == 0
    clock.now += dt.timedelta(seconds=webhooks.LEASE_SECONDS + 1)
    report = await webhooks.deliver_due(ctx)
    assert report.failed == 1
    row = await _row(sessionmaker, delivery.id)
    assert row.last_status is None
    assert row.last_error == f"connection refused by 127.0.0.1:{port}"


async def test_nothing_is_enqueued_without_a_webhook_and_bad_events_are_refused(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async with sessionmaker.begin() as session:
        connection = await add_connection(session, await add_tenant(session))
        assert (
            await webhook_outbox.enqueue(session, settings, "sync.completed", connection=connection)
            is None
        )
        configured = settings.replace(
            webhook_url="https://host.example/hooks", webhook_secret=Secret(SECRET)
        )
        with pytest.raises(webhook_outbox.WebhookError):
            await webhook_outbox.enqueue(session, configured, "sync.started", connection=connection)
        with pytest.raises(webhook_outbox.WebhookError):
            await webhook_outbox.enqueue(
                session,
                configured,
                "sync.completed",
                connection=connection,
                data={"access_token": "x"},
            )
