"""Webhooks come from real work: a completed sync and a revoked grant notify the host app."""

from __future__ import annotations

import datetime as dt

import aiohttp
import orjson
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db import repo, run_repo
from syncsvc.lifecycle import webhooks
from syncsvc.sandbox.config import FaultSpec
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.settings import Secret, Settings
from syncsvc.sync.context import SyncContext
from syncsvc.sync.runner import run_due
from syncsvc.vault import Vault
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.connected import register_and_connect
from tests.integration.host_api.conftest import Receiver
from tests.integration.host_api.test_webhooks import SECRET

Sessionmaker = async_sessionmaker[AsyncSession]


async def test_sync_completed_and_needs_reauth_are_delivered_signed(
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    receiver: Receiver,
) -> None:
    hooked = settings.replace(webhook_url=receiver.url, webhook_secret=Secret(SECRET))
    ctx = SyncContext(settings=hooked, sessionmaker=sessionmaker, vault=vault, http=http)
    _, connection = await register_and_connect(sessionmaker, vault, http, sandbox, GENERIC_TENANT)
    report = await run_due(ctx)
    assert report.sync == {"ok": 1}
    delivered = await webhooks.deliver_due(ctx)
    assert delivered.delivered == 1
    headers, body = receiver.received[0]
    event = orjson.loads(body)
    assert event["type"] == "sync.completed"
    assert event["data"]["connection_id"] == connection.id
    assert event["data"]["counts"]["new"] > 0
    assert webhooks.verify_signature(
        SECRET, headers[webhooks.SIGNATURE_HEADER], body, now=ctx.now()
    )
    assert b"access_token" not in body

    # The EHR revokes the grant; the next refresh learns it and the host app is told.
    for grant in sandbox.state.grants.values():
        grant.revoked = True
    # A sync is due then and the access token has expired: the refresh before it is due.
    later = ctx.now() + dt.timedelta(hours=1)
    ctx = SyncContext(
        settings=hooked, sessionmaker=sessionmaker, vault=vault, http=http, clock=lambda: later
    )
    async with sessionmaker.begin() as session:
        stored = await repo.get_connection(session, connection.id)
        assert stored is not None
        stored.next_refresh_at = later
        stored.next_sync_at = later
    second = await run_due(ctx)
    assert second.refresh == {"needs_reauth": 1}
    await webhooks.deliver_due(ctx)
    types = [orjson.loads(b)["type"] for _, b in receiver.received]
    assert types == ["sync.completed", "connection.needs_reauth"]
    reauth = orjson.loads(receiver.received[1][1])
    assert reauth["data"]["reason"] == "invalid_grant"


async def test_sync_completed_names_a_type_that_failed_and_when_it_is_tried_again(
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    receiver: Receiver,
) -> None:
    hooked = settings.replace(webhook_url=receiver.url, webhook_secret=Secret(SECRET))
    ctx = SyncContext(settings=hooked, sessionmaker=sessionmaker, vault=vault, http=http)
    _, connection = await register_and_connect(sessionmaker, vault, http, sandbox, GENERIC_TENANT)
    sandbox.tenant(GENERIC_TENANT).faults[:] = [FaultSpec(kind="status_500", target="Condition")]

    report = await run_due(ctx)

    assert report.sync == {"partial": 1}
    assert (await webhooks.deliver_due(ctx)).delivered == 1
    event = orjson.loads(receiver.received[0][1])
    data = event["data"]
    assert (event["type"], data["outcome"]) == ("sync.completed", "partial")
    condition = data["types"].pop("Condition")
    assert (condition["status"], condition["error_class"]) == ("transient_error", "upstream_5xx")
    async with sessionmaker() as session:
        states = await run_repo.sync_states(session, connection.id)
    assert dt.datetime.fromisoformat(condition["next_attempt_at"]) == (
        states["Condition"].next_attempt_at
    )
    assert data["types"]
    assert {t["status"] for t in data["types"].values()} == {"ok"}
