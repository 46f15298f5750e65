"""The tick and its leases: claim and work what is due, never twice at once, hand back on stop."""

from __future__ import annotations

import asyncio
import datetime as dt

import aiohttp
from sqlalchemy import update

from syncsvc.db.models.connections import Connection
from syncsvc.db.models.records import SyncRun
from syncsvc.lifecycle.chores import outbox_chores
from syncsvc.sandbox.config import FaultSpec
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.settings import Settings
from syncsvc.sync.runner import run_due
from syncsvc.sync.scheduler import SyncScheduler
from syncsvc.vault import Vault
from tests.fixtures.sandbox import CERNER_TENANT, GENERIC_TENANT

from . import (
    Sessionmaker,
    connect_many,
    connections,
    contexts,
    events,
    overlapping,
    runs,
    wait_until,
)


def slow_fhir(sandbox: RunningSandbox, latency_ms: int) -> None:
    """Every FHIR request of the generic tenant takes ``latency_ms`` longer."""
    sandbox.tenant(GENERIC_TENANT).faults = [FaultSpec(kind="latency", latency_ms=latency_ms)]


async def test_a_tick_claims_works_and_releases_what_is_due(
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
) -> None:
    _, ids = await connect_many(sessionmaker, vault, http, sandbox, GENERIC_TENANT, 3)
    async with contexts(settings, sessionmaker, vault, 1) as (ctx,):
        scheduler = SyncScheduler(ctx, chores=outbox_chores())
        await scheduler.tick()
        report = scheduler.last_report

    assert report is not None
    assert report.claimed == 3
    assert report.sync == {"ok": 3}
    # The fresh tokens need no refresh yet: the refresh rule moved next_refresh_at ahead.
    assert report.refresh == {"not_due": 3}
    rows = await connections(sessionmaker)
    now = dt.datetime.now(dt.UTC)
    for connection_id in ids:
        row = rows[connection_id]
        assert row.lease_owner is None
        assert row.lease_until is None
        assert row.next_sync_at is not None
        assert row.next_sync_at > now
        assert row.next_refresh_at is not None
        assert row.next_refresh_at > now
    # One ok event per pulled connection (a refresh that was not due is no event).
    recorded = await events(sessionmaker)
    assert [(e.kind, e.outcome, e.error_class) for e in recorded] == [("sync", "ok", None)] * 3
    assert {e.connection_id for e in recorded} == set(ids)
    # Nothing is due any more: the next tick claims nothing.
    async with contexts(settings, sessionmaker, vault, 1) as (ctx,):
        again = SyncScheduler(ctx, chores=outbox_chores())
        await again.tick()
    assert again.last_report is not None
    assert again.last_report.claimed == 0


async def test_two_schedulers_never_work_one_connection_at_the_same_time(
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
) -> None:
    _, ids = await connect_many(sessionmaker, vault, http, sandbox, GENERIC_TENANT, 8)
    slow_fhir(sandbox, 40)
    # Small batches, so the two claimers interleave batch by batch.
    small = settings.replace(claim_batch_size=2, sync_concurrency=2)
    claimed = 0
    async with contexts(small, sessionmaker, vault, 2) as (first, second):
        one, two = (
            SyncScheduler(first, chores=outbox_chores()),
            SyncScheduler(second, chores=outbox_chores()),
        )
        # A claim that loses a race for its rows (SQLite has no SKIP LOCKED) ends that tick
        # early; ticking again picks up the rest, as the scheduler's interval does.
        for _ in range(len(ids)):
            await asyncio.gather(one.tick(), two.tick())
            reports = (one.last_report, two.last_report)
            claimed += sum(r.claimed for r in reports if r is not None)
            if claimed == len(ids):
                break

    assert claimed == len(ids)
    done = await runs(sessionmaker)
    assert sorted(r.connection_id for r in done) == sorted(ids)  # each pulled exactly once
    assert overlapping(done) == []


async def test_a_lease_is_renewed_while_its_work_runs_long(
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
) -> None:
    _, (connection_id,) = await connect_many(sessionmaker, vault, http, sandbox, GENERIC_TENANT, 1)
    # Three FHIR requests of 700 ms each: the pull outlasts a one-second lease twice over.
    slow_fhir(sandbox, 700)
    short = settings.replace(lease_seconds=1)
    async with contexts(short, sessionmaker, vault, 2) as (worker, rival):
        working = asyncio.create_task(run_due(worker))

        async def leased() -> bool:
            return (await connections(sessionmaker))[connection_id].lease_owner == worker.owner

        await wait_until(leased)
        rival_claims = 0
        while not working.done():
            rival_claims += (await run_due(rival)).claimed
            await asyncio.sleep(0.1)
        report = await working

    assert report.sync == {"ok": 1}
    assert rival_claims == 0
    assert len(await runs(sessionmaker)) == 1


async def test_an_expired_lease_of_a_crashed_owner_is_taken_over(
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
) -> None:
    _, (crashed, alive) = await connect_many(sessionmaker, vault, http, sandbox, GENERIC_TENANT, 2)
    now = dt.datetime.now(dt.UTC)
    async with sessionmaker.begin() as session:
        # A worker died holding this lease a minute ago (its expiry has passed) ...
        await session.execute(
            update(Connection)
            .where(Connection.id == crashed)
            .values(lease_owner="dead-worker", lease_until=now - dt.timedelta(seconds=1))
        )
        # ... while this one's owner is alive and still within its lease.
        await session.execute(
            update(Connection)
            .where(Connection.id == alive)
            .values(lease_owner="live-worker", lease_until=now + dt.timedelta(minutes=5))
        )
    async with contexts(settings, sessionmaker, vault, 1) as (ctx,):
        report = await run_due(ctx)

    assert report.claimed == 1
    assert report.sync == {"ok": 1}
    done = await runs(sessionmaker)
    assert [(r.connection_id, r.owner) for r in done] == [(crashed, ctx.owner)]
    rows = await connections(sessionmaker)
    assert rows[crashed].lease_owner is None
    assert rows[alive].lease_owner == "live-worker"


async def test_a_run_whose_lease_was_taken_over_leaves_the_schedule_to_the_new_owner(
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
) -> None:
    _, (connection_id,) = await connect_many(sessionmaker, vault, http, sandbox, GENERIC_TENANT, 1)
    slow_fhir(sandbox, 300)
    async with contexts(settings, sessionmaker, vault, 1) as (worker,):
        working = asyncio.create_task(run_due(worker))

        async def leased() -> bool:
            return (await connections(sessionmaker))[connection_id].lease_owner == worker.owner

        await wait_until(leased)
        # The worker stalled past its lease meanwhile, and another process took the connection
        # over and scheduled it.
        taken_until = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
        their_sync = dt.datetime.now(dt.UTC) + dt.timedelta(hours=3)
        async with sessionmaker.begin() as session:
            await session.execute(
                update(Connection)
                .where(Connection.id == connection_id)
                .values(lease_owner="rival", lease_until=taken_until, next_sync_at=their_sync)
            )
        report = await working

    assert report.sync == {"ok": 1}
    row = (await connections(sessionmaker))[connection_id]
    # The run's closing write found the lease gone: the rival's lease and schedule stand ...
    assert row.lease_owner == "rival"
    assert row.next_sync_at == their_sync
    # ... and what the run did is still on record.
    (run,) = await runs(sessionmaker)
    assert run.outcome == "ok"
    assert row.last_sync_at == run.finished_at
    assert row.last_success_at == run.finished_at


async def test_stop_hands_back_unstarted_work_finishes_the_rest_and_releases_leases(
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
) -> None:
    _, ids = await connect_many(sessionmaker, vault, http, sandbox, GENERIC_TENANT, 6)
    slow_fhir(sandbox, 150)
    # Two at a time, one tick claims all six: four wait when stop() comes.
    narrow = settings.replace(sync_concurrency=2, tick_seconds=60)
    async with contexts(narrow, sessionmaker, vault, 1) as (ctx,):
        scheduler = SyncScheduler(ctx, chores=outbox_chores())
        scheduler.start()

        async def all_leased() -> bool:
            rows = (await connections(sessionmaker)).values()
            return sum(row.lease_owner == ctx.owner for row in rows) == len(ids)

        await wait_until(all_leased)
        await scheduler.stop()
        report = scheduler.last_report

    assert report is not None
    assert report.claimed == len(ids)
    assert report.handed_back > 0
    assert report.sync.total() + report.handed_back == len(ids)
    rows = await connections(sessionmaker)
    assert all(row.lease_owner is None and row.lease_until is None for row in rows.values())
    done = await runs(sessionmaker)
    # Work in flight finished (no run was left half-recorded) ...
    assert all(r.outcome == "ok" and r.finished_at is not None for r in done)
    assert len(done) == report.sync.total()
    # ... and what was handed back is still due, for whichever process ticks next.
    pulled = {r.connection_id for r in done}
    now = dt.datetime.now(dt.UTC)
    for connection_id in set(ids) - pulled:
        due = rows[connection_id].next_sync_at
        assert due is not None
        assert due <= now
    assert isinstance(done[0], SyncRun)


async def test_a_slow_connection_holds_one_slot_not_a_batch(
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
) -> None:
    _, (slow,) = await connect_many(sessionmaker, vault, http, sandbox, CERNER_TENANT, 1)
    _, fast = await connect_many(sessionmaker, vault, http, sandbox, GENERIC_TENANT, 6)
    # Every FHIR answer of the slow one's EHR takes 2 s: its pull takes several seconds.
    sandbox.tenant(CERNER_TENANT).faults = [FaultSpec(kind="latency", latency_ms=2000)]
    async with sessionmaker.begin() as session:
        # Due first, so the first claim takes it together with a fast one.
        await session.execute(
            update(Connection)
            .where(Connection.id == slow)
            .values(next_sync_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
        )
    # Claims of two, two worked at once: a batch would hold the fast ones until the slow ends.
    narrow = settings.replace(claim_batch_size=2, sync_concurrency=2)
    async with contexts(narrow, sessionmaker, vault, 1) as (ctx,):
        report = await run_due(ctx)

    assert report.claimed == 7
    assert report.sync == {"ok": 7}
    done = {r.connection_id: r for r in await runs(sessionmaker)}
    slow_run = done[slow]
    assert slow_run.finished_at is not None
    # The other slot went on claiming and working while the slow pull ran: a batch of two
    # would have let exactly one fast pull (its batch partner) start before the slow one ended.
    started_meanwhile = [c for c in fast if done[c].started_at < slow_run.finished_at]
    assert len(started_meanwhile) >= 2


async def test_a_tick_claims_as_room_frees_until_nothing_is_due(
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
) -> None:
    _, ids = await connect_many(sessionmaker, vault, http, sandbox, GENERIC_TENANT, 12)
    # Claims of two, two worked at once: no fixed number of claims ends the tick early.
    narrow = settings.replace(claim_batch_size=2, sync_concurrency=2, tick_seconds=60)
    async with contexts(narrow, sessionmaker, vault, 1) as (ctx,):
        scheduler = SyncScheduler(ctx, chores=outbox_chores())
        await scheduler.tick()
        report = scheduler.last_report

    assert report is not None
    assert report.claimed == len(ids)
    assert report.sync == {"ok": len(ids)}
    assert sorted(r.connection_id for r in await runs(sessionmaker)) == sorted(ids)


async def test_work_outlives_its_tick_and_the_next_ticks_claim_the_room_it_leaves(
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
) -> None:
    _, (slow,) = await connect_many(sessionmaker, vault, http, sandbox, CERNER_TENANT, 1)
    _, fast = await connect_many(sessionmaker, vault, http, sandbox, GENERIC_TENANT, 8)
    sandbox.tenant(CERNER_TENANT).faults = [FaultSpec(kind="latency", latency_ms=1500)]
    # The others slow enough that, two at a time, they outlast a tick's claiming on any
    # machine: a tick that finds nothing more due waits for its work, the slow pull included.
    sandbox.tenant(GENERIC_TENANT).faults = [FaultSpec(kind="latency", latency_ms=150)]
    async with sessionmaker.begin() as session:
        await session.execute(
            update(Connection)
            .where(Connection.id == slow)
            .values(next_sync_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
        )
    # Claims of two, two worked at once, and ticks that claim for well under the slow pull.
    narrow = settings.replace(claim_batch_size=2, sync_concurrency=2, tick_seconds=0.5)
    async with contexts(narrow, sessionmaker, vault, 1) as (ctx,):
        scheduler = SyncScheduler(ctx, chores=outbox_chores())
        await scheduler.tick()
        first_ended = dt.datetime.now(dt.UTC)
        # The tick ended while the slow pull it claimed runs on, still leased ...
        assert (await connections(sessionmaker))[slow].lease_owner == ctx.owner
        claimed = scheduler.last_report.claimed if scheduler.last_report is not None else 0
        # ... and the ticks after it claim the room the others leave, until nothing is due.
        for _ in range(40):  # bounded: each tick is at most tick_seconds of claiming
            if claimed >= 1 + len(fast):
                break
            await scheduler.tick()
            assert scheduler.last_report is not None
            claimed += scheduler.last_report.claimed
        await scheduler.stop()

    assert claimed == 1 + len(fast)
    done = {r.connection_id: r for r in await runs(sessionmaker)}
    assert sorted(done) == sorted([slow, *fast])  # each pulled once
    assert all(r.outcome == "ok" for r in done.values())
    slow_ended = done[slow].finished_at
    assert slow_ended is not None
    # A tick that waited for its work would have ended after the slow pull, and no later
    # tick could have started the others meanwhile.
    assert first_ended < slow_ended
    assert [c for c in fast if first_ended < done[c].started_at < slow_ended]
    rows = await connections(sessionmaker)
    assert all(row.lease_owner is None for row in rows.values())
