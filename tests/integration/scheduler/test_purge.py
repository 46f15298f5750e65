"""The tick purges expired launch attempts, used or expired links and old webhook deliveries."""

from __future__ import annotations

import datetime as dt
import uuid

import aiohttp
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db.models.activity import WebhookDelivery
from syncsvc.db.models.connections import ConnectLink, LaunchAttempt
from syncsvc.lifecycle.chores import outbox_chores
from syncsvc.lifecycle.purge import LAUNCH_GRACE, purge_expired
from syncsvc.settings import Settings
from syncsvc.sync.context import SyncContext
from syncsvc.sync.scheduler import SyncScheduler
from syncsvc.vault import Vault
from tests.integration.dbdata import add_tenant, utcnow

Sessionmaker = async_sessionmaker[AsyncSession]
HOUR = dt.timedelta(hours=1)


def _attempt(tenant_id: str, expires_at: dt.datetime, label: str) -> LaunchAttempt:
    return LaunchAttempt(
        id=label,
        state_hash=uuid.uuid4().hex * 2,
        code_verifier_enc="v1.k.x",
        nonce="n",
        tenant_id=tenant_id,
        user_id="u",
        browser_binding_hash="0" * 64,
        created_at=expires_at - dt.timedelta(minutes=10),
        expires_at=expires_at,
    )


def _link(label: str, expires_at: dt.datetime, used_at: dt.datetime | None) -> ConnectLink:
    return ConnectLink(
        id=label,
        user_id="u",
        created_at=expires_at - 24 * HOUR,
        expires_at=expires_at,
        used_at=used_at,
    )


def _delivery(label: str, created_at: dt.datetime, finished: bool) -> WebhookDelivery:
    return WebhookDelivery(
        id=label,
        event_type="sync.completed",
        payload=b"{}",
        created_at=created_at,
        next_attempt_at=None if finished else created_at,
    )


async def _ids(sessionmaker: Sessionmaker, column: object) -> set[str]:
    async with sessionmaker() as session:
        return set(await session.scalars(select(column)))  # type: ignore[call-overload]


async def test_the_tick_purges_finished_rows_in_batches_and_keeps_live_ones(
    settings: Settings, sessionmaker: Sessionmaker, vault: Vault, http: aiohttp.ClientSession
) -> None:
    ctx = SyncContext(settings, sessionmaker, vault, http)
    now = utcnow()
    long_ago = now - LAUNCH_GRACE - HOUR
    async with sessionmaker.begin() as session:
        tenant = await add_tenant(session)
        session.add_all(
            [_attempt(tenant.id, long_ago, f"gone-{n}") for n in range(5)]
            + [
                _attempt(tenant.id, now - dt.timedelta(minutes=5), "just-expired"),
                _attempt(tenant.id, now + dt.timedelta(minutes=5), "live"),
                _link("used-long-ago", now + 10 * HOUR, used_at=long_ago),
                _link("expired-long-ago", long_ago, used_at=None),
                _link("used-just-now", now + 10 * HOUR, used_at=now - dt.timedelta(minutes=5)),
                _link("unused-live", now + 10 * HOUR, used_at=None),
                _delivery("delivered-40-days-ago", now - dt.timedelta(days=40), finished=True),
                _delivery("delivered-yesterday", now - dt.timedelta(days=1), finished=True),
                _delivery("still-retrying", now - dt.timedelta(days=40), finished=False),
            ]
        )

    # Small batches, a bounded number per round: a backlog goes over several rounds.
    first = await purge_expired(ctx, batch_size=2, batches=2)
    assert first.deleted["launch_attempts"] == 4
    assert len(await _ids(sessionmaker, LaunchAttempt.id)) == 3

    # The scheduler's tick does the rest.
    scheduler = SyncScheduler(ctx, chores=outbox_chores())
    await scheduler.tick()

    assert await _ids(sessionmaker, LaunchAttempt.id) == {"just-expired", "live"}
    assert await _ids(sessionmaker, ConnectLink.id) == {"used-just-now", "unused-live"}
    assert await _ids(sessionmaker, WebhookDelivery.id) == {
        "delivered-yesterday",
        "still-retrying",
    }
    again = await purge_expired(ctx)
    assert again.total == 0
