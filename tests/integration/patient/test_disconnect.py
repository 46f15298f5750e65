"""Disconnecting from the patient's page: confirmation, CSRF, erase or keep, and the EHR's side."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from syncsvc.db import repo
from syncsvc.db.models.records import SyncState
from syncsvc.sandbox.config import FaultSpec
from syncsvc.sandbox.patient import ScriptedPatient
from syncsvc.sync.pull import pull_connection
from syncsvc.sync.token_source import TokenSource
from syncsvc.web.keys import SERVICES
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.patient.helpers import (
    NOTHING_LEFT,
    connect_and_sync,
    connection,
    context,
    counts,
    disconnect_url,
    events,
    form_posting_to,
    grant_of,
    open_disconnect,
    words,
)
from tests.integration.scheduler import wait_until
from tests.integration.web.flows import Flow
from tests.integration.web.service import RunningService


async def test_disconnect_revokes_deletes_tokens_and_erases_by_default(flow: Flow) -> None:
    service = flow.service
    async with ScriptedPatient(username="nancysmart") as patient:
        connected = await connect_and_sync(flow, patient)
        status = await patient.open(f"{service.origin}/status")
        confirm, form = await open_disconnect(patient, disconnect_url(service, connected.id))
        assert confirm.status == 200
        assert "Disconnect Generic SMART Sandbox?" in words(confirm.body)
        assert form.fields["data"] == "erase"  # the default choice
        assert form.fields["csrf"]
        done = await patient.submit(confirm.url, form)
        after = await patient.open(f"{service.origin}/status")
    assert f"/status/connections/{connected.id}/disconnect" in status.body
    assert done.status == 200, done.body
    text = words(done.body)
    assert "Generic SMART Sandbox is disconnected" in text
    assert "keys this service held for your record at Generic SMART Sandbox were deleted" in text
    assert "confirmed that this service's access is cancelled" in text
    assert "Your synced data was erased" in text

    row = await connection(service, connected.id)
    assert row.status == "revoked"
    assert row.status_reason == "disconnected_by_patient"
    assert row.next_sync_at is None
    assert row.next_refresh_at is None
    assert await counts(service, connected.id) == NOTHING_LEFT
    assert grant_of(flow.sandbox).revoked
    [disconnect] = await events(service, "disconnect")
    assert disconnect.detail == "by patient; data erased"
    [revocation] = await events(service, "revocation")
    assert revocation.outcome == "ok"
    # The status page now says what happened and offers to connect again.
    assert "Disconnected." in words(after.body)
    assert "You disconnected it." in after.body
    assert form_posting_to(after.body, "/connect/start").fields["tenant"] == "generic"
    assert f"/status/connections/{connected.id}/disconnect" not in after.body


async def test_keeping_the_data_then_erasing_it_later(flow: Flow) -> None:
    service = flow.service
    async with ScriptedPatient(username="nancysmart") as patient:
        connected = await connect_and_sync(flow, patient)
        synced = (await counts(service, connected.id))["resources"]
        url = disconnect_url(service, connected.id)
        confirm, form = await open_disconnect(patient, url)
        kept = await patient.submit(confirm.url, form, data="keep")
        assert f"Your synced data was kept ({synced} records)" in words(kept.body)
        assert (await counts(service, connected.id))["resources"] == synced
        status = await patient.open(f"{service.origin}/status")
        assert f"Data still kept here ({synced} records)" in words(status.body)
        assert "Erase the kept data" in status.body
        # Disconnecting again erases what was kept; the revocation is not repeated.
        again, form = await open_disconnect(patient, url)
        erased = await patient.submit(again.url, form)
    text = words(erased.body)
    assert "This connection was already disconnected." in text
    assert "This service holds no keys for your record" in text
    assert f"Your synced data was erased ({synced} records)" in text
    assert await counts(service, connected.id) == NOTHING_LEFT
    assert len(await events(service, "revocation")) == 1
    row = await connection(service, connected.id)
    assert row.status_reason == "disconnected_by_patient"


#: How long the EHR holds the pull's Observation search: the erase happens meanwhile.
HELD_SECONDS = 2.0


async def test_an_erase_while_a_pull_is_fetching_is_not_undone_by_its_later_pages(
    flow: Flow,
) -> None:
    service = flow.service
    async with ScriptedPatient(username="nancysmart") as patient:
        connected = await connect_and_sync(flow, patient)
        held = FaultSpec(
            kind="latency", target="Observation", latency_ms=int(HELD_SECONDS * 1000), count=1
        )
        flow.sandbox.tenant(GENERIC_TENANT).faults = [held]
        ctx = context(flow)
        # A full pull, so every page it fetches holds resources to store again.
        pull = asyncio.create_task(
            pull_connection(ctx, connected.id, TokenSource(ctx, connected.id), full=True)
        )
        counters = flow.sandbox.state.fault_counters

        async def held_at_the_ehr() -> bool:
            return id(held) in counters or pull.done()

        await wait_until(held_at_the_ehr, within=10)
        assert id(held) in counters, "the Observation search never reached the EHR"
        # The search is at the EHR now; the patient disconnects and erases meanwhile.
        confirm, form = await open_disconnect(patient, disconnect_url(service, connected.id))
        done = await patient.submit(confirm.url, form)
        assert "Your synced data was erased" in words(done.body)
        assert not pull.done(), "the pull ended before the erase: nothing was tested"
        summary = await asyncio.wait_for(pull, 30)

    # The Observation page came back after the erase: it was not stored, nor any type's state.
    assert await counts(service, connected.id) == NOTHING_LEFT
    async with service.app[SERVICES].sessionmaker() as session:
        states = select(func.count()).where(SyncState.connection_id == connected.id)
        assert await session.scalar(states) == 0
    # Ended for the disconnect: by a write refused, or by the token the grant no longer has.
    assert (summary.outcome, summary.error_class) in {
        ("transient", "disconnected"),
        ("transient", "lost_lease"),
    }
    row = await connection(service, connected.id)
    assert row.status == "revoked"


async def test_the_form_needs_its_session_token(flow: Flow) -> None:
    service = flow.service
    async with ScriptedPatient(username="nancysmart") as patient:
        connected = await connect_and_sync(flow, patient)
        confirm, form = await open_disconnect(patient, disconnect_url(service, connected.id))
        forged = await patient.submit(confirm.url, form, csrf="0" * 64)
        missing = await patient.submit(confirm.url, form, csrf="")
        bad_choice = await patient.submit(confirm.url, form, data="shred")
    assert forged.status == 403
    assert "Nothing was changed" in words(forged.body)
    assert missing.status == 403
    assert bad_choice.status == 400
    row = await connection(service, connected.id)
    assert row.status == "active"
    assert (await counts(service, connected.id))["credentials"] == 1
    assert not grant_of(flow.sandbox).revoked


async def test_another_users_connection_is_not_found(flow: Flow) -> None:
    service = flow.service
    async with ScriptedPatient(username="nancysmart") as owner:
        connected = await connect_and_sync(flow, owner)
    async with ScriptedPatient(username="wilmasmart") as other:
        page = await other.connect(await flow.link("user-8", tenant="generic"))
        assert page.status == 200
        url = disconnect_url(service, connected.id)
        shown = await other.open(url)
        unknown = await other.open(disconnect_url(service, "no-such-id"))
        status = await other.open(f"{service.origin}/status")
        # The other session's own, valid form token does not reach someone else's connection.
        [own] = await _connections_of(service, "user-8")
        own_url = disconnect_url(service, own)
        _, own_form = await open_disconnect(other, own_url)
        own_form.action = url
        posted = await other.submit(own_url, own_form)
    assert shown.status == 404
    assert unknown.status == 404
    assert words(shown.body) == words(unknown.body)
    assert "Nancy" not in status.body
    assert connected.id not in status.body
    assert posted.status == 404
    row = await connection(service, connected.id)
    assert row.status == "active"
    assert (await counts(service, connected.id))["credentials"] == 1


async def _connections_of(service: RunningService, user_id: str) -> list[str]:
    async with service.app[SERVICES].sessionmaker() as session:
        return [c.id for c in await repo.list_connections(session, user_id=user_id)]
