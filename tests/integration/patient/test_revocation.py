"""Revocation at the EHR when it is down: tokens gone here at once, revocation retried later."""

from __future__ import annotations

import datetime as dt

from syncsvc.db import repo
from syncsvc.lifecycle.disconnect import disconnect_connection
from syncsvc.lifecycle.revocations import MAX_ATTEMPTS, retry_pending
from syncsvc.sandbox.config import FaultSpec
from syncsvc.sandbox.patient import ScriptedPatient
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.sync.context import utcnow
from syncsvc.web.keys import SERVICES
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.patient.helpers import (
    NOTHING_LEFT,
    connect_and_sync,
    context,
    counts,
    disconnect_url,
    events,
    grant_of,
    open_disconnect,
    pending,
    words,
)
from tests.integration.web.flows import Flow


class Clock:
    """A clock the test moves by hand (no sleeping, no timed assertions)."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        """Move the clock forward."""
        self.now += dt.timedelta(**delta)


def _revocation_down(sandbox: RunningSandbox) -> None:
    sandbox.tenant(GENERIC_TENANT).faults.append(FaultSpec(kind="status_503", target="revoke"))


async def test_ehr_down_then_up_revocation_is_pending_then_retried(flow: Flow) -> None:
    service = flow.service
    async with ScriptedPatient(username="nancysmart") as patient:
        connected = await connect_and_sync(flow, patient)
        _revocation_down(flow.sandbox)
        confirm, form = await open_disconnect(patient, disconnect_url(service, connected.id))
        done = await patient.submit(confirm.url, form)
        status = await patient.open(f"{service.origin}/status")
    assert done.status == 200
    text = words(done.body)
    assert "could not confirm yet that this service's access is cancelled" in text
    assert "keys this service held for your record at Generic SMART Sandbox were deleted" in text
    assert "has not yet confirmed that this service's access was withdrawn" in words(status.body)
    # Nothing half-done: tokens and data gone here, the one token to revoke queued, encrypted.
    assert await counts(service, connected.id) == {"resources": 0, "credentials": 0, "pending": 1}
    [queued] = await pending(service)
    grant = grant_of(flow.sandbox)
    assert grant.refresh_token is not None
    assert grant.refresh_token not in queued.token_enc
    assert queued.token_enc.startswith("v1.")
    assert queued.token_type_hint == "refresh_token"
    assert queued.attempts == 1
    assert queued.lease_owner is None
    assert "503" in (queued.last_error or "")
    assert not grant.revoked

    clock = Clock()
    clock.now = queued.created_at
    ctx = context(flow, clock)
    early = await retry_pending(ctx)
    assert early.claimed == 0  # not due before its backoff ends
    clock.advance(hours=1)
    still_down = await retry_pending(ctx)
    assert still_down.to_json() == {"claimed": 1, "revoked": 0, "retrying": 1, "given_up": 0}
    flow.sandbox.tenant(GENERIC_TENANT).faults.clear()
    clock.advance(hours=7)
    back_up = await retry_pending(ctx)
    assert back_up.to_json() == {"claimed": 1, "revoked": 1, "retrying": 0, "given_up": 0}
    assert grant_of(flow.sandbox).revoked
    assert await pending(service) == []
    outcomes = [e.outcome for e in await events(service, "revocation")]
    assert outcomes == ["transient", "transient", "ok"]


async def test_revocation_gives_up_after_the_last_attempt(flow: Flow) -> None:
    async with ScriptedPatient(username="nancysmart") as patient:
        connected = await connect_and_sync(flow, patient)
    _revocation_down(flow.sandbox)
    result = await disconnect_connection(context(flow), connected.id, by="operator", erase=False)
    assert result.revocation == "pending"
    assert result.resources_kept > 0
    clock = Clock()
    ctx = context(flow, clock)
    for _ in range(MAX_ATTEMPTS - 2):
        clock.advance(hours=7)
        assert (await retry_pending(ctx)).retrying == 1
    clock.advance(hours=7)
    last = await retry_pending(ctx)
    assert last.given_up == 1
    assert await pending(flow.service) == []
    final = (await events(flow.service, "revocation"))[-1]
    assert final.outcome == "failed"
    assert final.detail is not None
    assert final.detail.startswith(f"gave up after {MAX_ATTEMPTS} attempts")
    clock.advance(hours=7)
    assert (await retry_pending(ctx)).claimed == 0


async def test_a_tenant_without_revocation_is_reported_as_such(flow: Flow) -> None:
    async with ScriptedPatient(username="nancysmart") as patient:
        connected = await connect_and_sync(flow, patient)
        async with flow.service.app[SERVICES].sessionmaker.begin() as session:
            tenant = await repo.get_tenant(session, connected.tenant_id)
            assert tenant is not None
            endpoints = {**tenant.endpoints, "revocation_endpoint": None}
            await repo.update_tenant(session, tenant.id, now=utcnow(), endpoints=endpoints)
        confirm, form = await open_disconnect(patient, disconnect_url(flow.service, connected.id))
        assert "offers no way for this service to cancel its access" in words(confirm.body)
        done = await patient.submit(confirm.url, form)
    assert "offers no way for this service to cancel its access" in words(done.body)
    assert await counts(flow.service, connected.id) == NOTHING_LEFT
    assert not grant_of(flow.sandbox).revoked
    assert await events(flow.service, "revocation") == []


async def test_disconnecting_twice_reports_the_revocation_still_pending(flow: Flow) -> None:
    async with ScriptedPatient(username="nancysmart") as patient:
        connected = await connect_and_sync(flow, patient)
    _revocation_down(flow.sandbox)
    ctx = context(flow)
    first = await disconnect_connection(ctx, connected.id, by="host_app", erase=True)
    second = await disconnect_connection(ctx, connected.id, by="operator", erase=True)
    assert (first.revocation, first.tokens_deleted, first.already_disconnected) == (
        "pending",
        True,
        False,
    )
    assert (second.revocation, second.tokens_deleted, second.already_disconnected) == (
        "pending",
        False,
        True,
    )
    assert len(await pending(flow.service)) == 1
    async with flow.service.app[SERVICES].sessionmaker() as session:
        row = await repo.get_connection(session, connected.id)
    assert row is not None
    assert row.status_reason == "disconnected_by_host_app"
