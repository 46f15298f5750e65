"""Repository functions on real SQLite and PostgreSQL databases, including their races."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.pool.base import ResetStyle

from syncsvc.db import launch_repo, repo, run_repo
from syncsvc.db.columns import new_id
from syncsvc.db.models.connections import Credential, LaunchAttempt
from syncsvc.errors import Conflict, LaunchError, NotFound

from .dbdata import add_connection, add_tenant, utcnow

Sessionmaker = async_sessionmaker[AsyncSession]


async def test_tenant_crud_and_uniqueness(sessionmaker: Sessionmaker) -> None:
    async with sessionmaker.begin() as session:
        tenant = await add_tenant(session, name="cerner", vendor="cerner", scopes_supported=None)
        tenant_id = tenant.id
    async with sessionmaker() as session:
        loaded = await repo.get_tenant_by_name(session, "cerner")
        assert loaded is not None
        assert loaded.id == tenant_id
        assert await repo.get_tenant_by_base(session, loaded.fhir_base) is not None
        assert loaded.created_at.tzinfo is not None
        assert loaded.created_at.utcoffset() == dt.timedelta(0)
        assert loaded.endpoints == {}
        assert loaded.scopes_supported is None
        assert [t.name for t in await repo.list_tenants(session)] == ["cerner"]
    async with sessionmaker.begin() as session:
        updated = await repo.update_tenant(
            session,
            tenant_id,
            now=utcnow(),
            endpoints={"token": "https://ehr.example/token"},
            discovery_error=None,
        )
        assert updated.endpoints["token"] == "https://ehr.example/token"
        with pytest.raises(ValueError, match="updatable"):
            await repo.update_tenant(session, tenant_id, now=utcnow(), created_at=utcnow())
    async with sessionmaker.begin() as session:
        with pytest.raises(NotFound):
            await repo.update_tenant(session, new_id(), now=utcnow(), display_name="x")
    with pytest.raises(IntegrityError):
        async with sessionmaker.begin() as session:
            await add_tenant(session, name="cerner")
    with pytest.raises(IntegrityError):
        async with sessionmaker.begin() as session:
            await add_tenant(session, vendor="allscripts")  # the CHECK constraint
    async with sessionmaker.begin() as session:
        assert await repo.delete_tenant(session, tenant_id)
        assert not await repo.delete_tenant(session, tenant_id)


async def test_connections_create_find_list_and_status(sessionmaker: Sessionmaker) -> None:
    async with sessionmaker.begin() as session:
        tenant = await add_tenant(session)
        first = await add_connection(session, tenant, patient_id="p-1")
        await add_connection(session, tenant, patient_id="p-2")
    async with sessionmaker.begin() as session:
        found = await repo.find_connection(
            session, tenant_id=tenant.id, user_id=first.user_id, patient_id="p-1"
        )
        assert found is not None
        assert found.id == first.id
        assert len(await repo.list_connections(session, tenant_id=tenant.id)) == 2
        assert [c.id for c in await repo.list_connections(session, user_id=first.user_id)] == [
            first.id
        ]
        await repo.set_connection_status(
            session,
            first.id,
            status="needs_reauth",
            now=utcnow(),
            reason="invalid_grant",
            message="Please reconnect.",
            error_uri="https://ehr.example/errors/1",
        )
    async with sessionmaker() as session:
        loaded = await repo.get_connection(session, first.id)
        assert loaded is not None
        assert (loaded.status, loaded.status_reason) == ("needs_reauth", "invalid_grant")
        assert [c.id for c in await repo.list_connections(session, status="active")] != [first.id]
        with pytest.raises(NotFound):
            await repo.set_connection_status(session, new_id(), status="active", now=utcnow())
    # One connection per (tenant, user, patient): a reconnect must reuse the row.
    with pytest.raises(IntegrityError):
        async with sessionmaker.begin() as session:
            await add_connection(session, tenant, patient_id="p-1", user_id=first.user_id)


async def _write(session: AsyncSession, connection_id: str, version: int | None, token: str) -> int:
    return await repo.upsert_credentials(
        session,
        connection_id,
        expected_version=version,
        key_id="k1",
        refresh_token_enc=token,
        access_token_enc=f"access-{token}",
        access_expires_at=utcnow() + dt.timedelta(seconds=570),
        refresh_expires_at=None,
        now=utcnow(),
    )


async def test_credentials_compare_and_swap(sessionmaker: Sessionmaker) -> None:
    async with sessionmaker.begin() as session:
        connection = await add_connection(session, await add_tenant(session))
        assert await repo.get_credentials(session, connection.id) is None
        assert await _write(session, connection.id, None, "rt-1") == 1
    async with sessionmaker.begin() as session:
        with pytest.raises(Conflict):
            await _write(session, connection.id, None, "rt-other")
        # The transaction is still usable after a lost insert (no aborted PostgreSQL tx).
        assert await _write(session, connection.id, 1, "rt-2") == 2
    async with sessionmaker.begin() as session:
        with pytest.raises(Conflict):
            await _write(session, connection.id, 1, "rt-stale")
    async with sessionmaker() as session:
        stored = await repo.get_credentials(session, connection.id)
        assert stored is not None
        assert (stored.version, stored.refresh_token_enc) == (2, "rt-2")
        assert stored.access_expires_at is not None
        assert stored.access_expires_at.tzinfo


async def test_token_lifetimes_read_the_stored_expiries(sessionmaker: Sessionmaker) -> None:
    async with sessionmaker.begin() as session:
        connection = await add_connection(session, await add_tenant(session))
        assert await repo.token_lifetimes(session, connection.id) is None
        await _write(session, connection.id, None, "rt-1")
    async with sessionmaker.begin() as session:
        stored = await repo.get_credentials(session, connection.id)
        assert stored is not None
        lifetimes = await repo.token_lifetimes(session, connection.id)
        assert lifetimes == repo.TokenLifetimes(stored.access_expires_at, None, True)
        assert lifetimes.access_expires_at is not None
        assert lifetimes.access_expires_at.utcoffset() == dt.timedelta(0)
        # A grant without a refresh token, whose refresh token would have expired.
        stored.refresh_token_enc = None
        stored.refresh_expires_at = utcnow() + dt.timedelta(days=1)
    async with sessionmaker() as session:
        lifetimes = await repo.token_lifetimes(session, connection.id)
        assert lifetimes is not None
        assert not lifetimes.has_refresh_token
        assert lifetimes.refresh_expires_at is not None
        assert lifetimes.refresh_expires_at.utcoffset() == dt.timedelta(0)


async def test_saving_a_sync_state_creates_it_then_changes_only_the_fields_given(
    sessionmaker: Sessionmaker,
) -> None:
    first, later = utcnow(), utcnow() + dt.timedelta(minutes=5)
    async with sessionmaker.begin() as session:
        connection = await add_connection(session, await add_tenant(session))
        await run_repo.save_sync_state(
            session,
            connection.id,
            "Observation",
            now=first,
            status="ok",
            granted_parts=["category=http://terminology.hl7.org/CodeSystem/x|laboratory"],
            new_count=3,
        )
    async with sessionmaker.begin() as session:
        states = await run_repo.sync_states(session, connection.id)
        created = states["Observation"]
        assert (created.status, created.new_count, created.changed_count) == ("ok", 3, 0)
        assert created.granted_parts == [
            "category=http://terminology.hl7.org/CodeSystem/x|laboratory"
        ]
        assert created.withdrawn_parts is None
        assert created.updated_at == first
        await run_repo.save_sync_state(
            session,
            connection.id,
            "Observation",
            now=later,
            status="denied",
            granted_parts=None,
            error_message="no",
        )
    async with sessionmaker() as session:
        states = await run_repo.sync_states(session, connection.id)
        assert list(states) == ["Observation"]
        saved = states["Observation"]
        assert (saved.status, saved.error_message, saved.granted_parts) == ("denied", "no", None)
        # What the second save did not name is kept.
        assert (saved.new_count, saved.changed_count) == (3, 0)
        assert saved.updated_at == later


async def test_held_sync_states_are_written_together_new_and_existing_alike(
    sessionmaker: Sessionmaker,
) -> None:
    first, later = utcnow(), utcnow() + dt.timedelta(minutes=5)
    async with sessionmaker.begin() as session:
        connection = await add_connection(session, await add_tenant(session))
        await run_repo.save_sync_state(
            session, connection.id, "Condition", now=first, status="error", new_count=7
        )
    held = run_repo.StateBatch()
    # Two sets of columns (a full pull names last_full_at), a new row and an existing one.
    held.add(connection.id, "Condition", now=later, status="ok", watermark=later)
    held.add(connection.id, "Observation", now=later, status="ok", last_full_at=later)
    held.add(connection.id, "Patient", now=later, status="ok", last_full_at=later, new_count=1)
    with pytest.raises(ValueError, match="status"):
        held.add(connection.id, "Goal", now=later, granted_parts=None)
    async with sessionmaker.begin() as session:
        await held.write(session)
        # Written once: a second write holds nothing.
        await held.write(session)
    async with sessionmaker() as session:
        states = await run_repo.sync_states(session, connection.id)
    assert sorted(states) == ["Condition", "Observation", "Patient"]
    condition, observation, patient = (states[t] for t in sorted(states))
    assert (condition.status, condition.watermark, condition.new_count) == ("ok", later, 7)
    assert condition.last_full_at is None
    assert (observation.status, observation.last_full_at) == ("ok", later)
    assert (observation.new_count, observation.deleted_count) == (0, 0)
    assert (patient.new_count, patient.updated_at) == (1, later)


async def test_a_connection_is_read_with_its_tenant_and_tokens_in_one_go(
    sessionmaker: Sessionmaker,
) -> None:
    async with sessionmaker.begin() as session:
        tenant = await add_tenant(session)
        connection = await add_connection(session, tenant)
    async with sessionmaker() as session:
        assert await repo.get_connection_with(session, "no-such-id") is None
        assert await repo.connection_schedule(session, "no-such-id") is None
        # No tokens stored yet: the connection and tenant all the same, no expiry.
        found = await repo.get_connection_with(session, connection.id, credentials=True)
        assert found is not None
        assert (found[0].id, found[1].id, found[2]) == (connection.id, tenant.id, None)
        bare = await repo.connection_schedule(session, connection.id)
        assert bare is not None
        assert (bare[0].id, bare[0].tenant_id, bare[1]) == (connection.id, tenant.id, None)
        assert (bare[0].status, bare[0].failure_count) == ("active", 0)
        assert bare[0].granted_scopes == connection.granted_scopes
        assert await repo.token_lifetimes(session, connection.id) is None
    async with sessionmaker.begin() as session:
        await _write(session, connection.id, None, "rt-1")
    async with sessionmaker() as session:
        plain = await repo.get_connection_with(session, connection.id)
        assert plain is not None
        assert (plain[0].id, plain[1].id, plain[2]) == (connection.id, tenant.id, None)
        found = await repo.get_connection_with(session, connection.id, credentials=True)
        assert found is not None
        assert found[2] is not None
        assert found[2].refresh_token_enc == "rt-1"
        read = await repo.connection_schedule(session, connection.id)
        assert read is not None
        expiry = read[1]
        assert expiry is not None
        assert expiry == await repo.token_lifetimes(session, connection.id)
        assert expiry.has_refresh_token
        assert expiry.refresh_expires_at is None
        assert expiry.access_expires_at == found[2].access_expires_at


async def test_a_connection_back_in_the_pool_holds_no_transaction(
    sessionmaker: Sessionmaker,
) -> None:
    engine = sessionmaker.kw["bind"]
    if engine.dialect.name == "sqlite":
        # Not rolled back again on its way into the pool (the session ended its transaction).
        assert engine.pool._reset_on_return is ResetStyle.reset_none
    session = sessionmaker()
    await add_tenant(session, name="never-committed")
    await session.close()  # no commit: the session rolls its transaction back itself
    async with sessionmaker.begin() as session:
        # The same pooled connection writes and commits on its own after that.
        await add_tenant(session, name="committed")
    async with sessionmaker() as session:
        assert await repo.get_tenant_by_name(session, "never-committed") is None
        assert await repo.get_tenant_by_name(session, "committed") is not None


async def test_concurrent_credential_writers_one_wins(sessionmaker: Sessionmaker) -> None:
    async with sessionmaker.begin() as session:
        connection = await add_connection(session, await add_tenant(session))
        await _write(session, connection.id, None, "rt-1")

    async def writer(token: str) -> str:
        try:
            async with sessionmaker.begin() as session:
                await _write(session, connection.id, 1, token)
                await asyncio.sleep(0.05)  # hold the row while the others arrive
        except Conflict:
            return "lost"
        return token

    results = await asyncio.wait_for(
        asyncio.gather(*(writer(f"rt-{n}") for n in range(2, 6))), timeout=30
    )
    winners = [result for result in results if result != "lost"]
    assert len(winners) == 1
    async with sessionmaker() as session:
        stored = await repo.get_credentials(session, connection.id)
        assert stored is not None
        assert (stored.version, stored.refresh_token_enc) == (2, winners[0])


async def test_deleting_a_connection_deletes_its_credentials(sessionmaker: Sessionmaker) -> None:
    async with sessionmaker.begin() as session:
        connection = await add_connection(session, await add_tenant(session))
        await _write(session, connection.id, None, "rt-1")
    async with sessionmaker.begin() as session:
        await session.execute(text("DELETE FROM connections WHERE id = :id"), {"id": connection.id})
    async with sessionmaker() as session:
        assert await session.get(Credential, connection.id) is None


async def _new_attempt(
    sessionmaker: Sessionmaker, state_hash: str, *, ttl: int = 600, binding: str = "b" * 64
) -> str:
    async with sessionmaker.begin() as session:
        tenant = await add_tenant(session)
        attempt = await launch_repo.create_launch_attempt(
            session,
            attempt_id=new_id(),
            state_hash=state_hash,
            code_verifier_enc="v1.k1.opaque",
            nonce="nonce-1",
            tenant_id=tenant.id,
            user_id="user-1",
            browser_binding_hash=binding,
            requested_scopes=["openid"],
            now=utcnow(),
            ttl_seconds=ttl,
        )
        return attempt.id


async def _consume(sessionmaker: Sessionmaker, state_hash: str, binding: str = "b" * 64) -> str:
    async with sessionmaker.begin() as session:
        attempt = await launch_repo.consume_launch_attempt(
            session, state_hash=state_hash, browser_binding_hash=binding, now=utcnow()
        )
        await launch_repo.set_launch_outcome(session, attempt.id, "connected")
        return attempt.id


async def _launch_reason(sessionmaker: Sessionmaker, state_hash: str, binding: str) -> str:
    with pytest.raises(LaunchError) as caught:
        await _consume(sessionmaker, state_hash, binding)
    return caught.value.reason


async def test_launch_attempt_is_single_use(sessionmaker: Sessionmaker) -> None:
    attempt_id = await _new_attempt(sessionmaker, "1" * 64)
    assert await _launch_reason(sessionmaker, "1" * 64, "c" * 64) == "state_browser_mismatch"
    # A wrong browser does not burn the state for the right one.
    assert await _consume(sessionmaker, "1" * 64) == attempt_id
    assert await _launch_reason(sessionmaker, "1" * 64, "b" * 64) == "state_replayed"
    assert await _launch_reason(sessionmaker, "2" * 64, "b" * 64) == "state_unknown"
    await _new_attempt(sessionmaker, "3" * 64, ttl=-1)
    assert await _launch_reason(sessionmaker, "3" * 64, "b" * 64) == "state_expired"
    async with sessionmaker() as session:
        stored = await session.get(LaunchAttempt, attempt_id)
        assert stored is not None
        assert stored.used_at is not None
        assert stored.outcome == "connected"
    async with sessionmaker.begin() as session:
        removed = await launch_repo.delete_expired_launch_attempts(session, before=utcnow())
        assert removed == 1


async def test_concurrent_callbacks_with_one_state_exactly_one_wins(
    sessionmaker: Sessionmaker,
) -> None:
    attempt_id = await _new_attempt(sessionmaker, "4" * 64)

    async def callback() -> str:
        try:
            return await _consume(sessionmaker, "4" * 64)
        except LaunchError as exc:
            return exc.reason

    results = await asyncio.wait_for(asyncio.gather(*(callback() for _ in range(5))), timeout=30)
    assert sorted(results) == sorted([attempt_id] + ["state_replayed"] * 4)


async def test_connect_link_is_single_use(sessionmaker: Sessionmaker) -> None:
    async with sessionmaker.begin() as session:
        tenant = await add_tenant(session)
        await launch_repo.create_connect_link(
            session,
            link_id="lnk-1",
            user_id="u-1",
            tenant_id=tenant.id,
            now=utcnow(),
            ttl_seconds=3600,
        )
        await launch_repo.create_connect_link(
            session, link_id="lnk-2", user_id="u-1", tenant_id=None, now=utcnow(), ttl_seconds=-1
        )

    async def consume(link_id: str) -> str:
        try:
            async with sessionmaker.begin() as session:
                link = await launch_repo.consume_connect_link(session, link_id, now=utcnow())
                return link.user_id
        except LaunchError as exc:
            return exc.reason

    results = await asyncio.wait_for(asyncio.gather(*(consume("lnk-1") for _ in range(3))), 30)
    assert sorted(results) == ["link_used", "link_used", "u-1"]
    assert await consume("lnk-2") == "link_expired"
    assert await consume("lnk-3") == "link_unknown"
    async with sessionmaker() as session:
        link = await launch_repo.get_connect_link(session, "lnk-1")
        assert link is not None
        assert link.used_at is not None
