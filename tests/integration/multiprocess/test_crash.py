"""Workers SIGKILLed mid-refresh and mid-pull, restarted: only unstored rotations are lost.

One worker runs at a time during the crash phase, so the test always knows whom to kill. Kills
land at chosen points: while a pull is running (a ``sync_runs`` row is open), at a random moment,
and, through a loopback gateway in front of the EHR's token endpoint, either just before a
refresh reaches the EHR or just after the EHR rotated the refresh token but before the worker
could store it. That last window is the one a crash can lose a grant in (the EHR retired the
token we hold, and strict rotation revokes the grant when it is presented again); every such
loss must be accounted for by a rotation the sandbox made that syncsvc never stored, and every
other connection must come through active, with its record complete and nothing stored twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import exists, select, update

from syncsvc.db.models.connections import Connection
from syncsvc.db.models.records import SyncRun
from syncsvc.sandbox.config import FaultSpec, SandboxConfig
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.settings import Settings
from syncsvc.vault import Vault
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.scheduler import overlapping, wait_until

from . import (
    Sessionmaker,
    Worker,
    grant_of,
    make_fleet,
    nancys_record,
    snapshot,
    strict_rotation,
    utcnow,
    worker_env,
)

CONNECTIONS = 60
TYPES = ("Patient", "Condition", "Observation")
#: Where each kill falls, in order.
KILLS = ("pull", "before_ehr", "after_rotation", "random", "after_rotation", "pull", "before_ehr")
SEED = 4242
SYNC_CONCURRENCY = 4
TRIGGER_SECONDS = 45.0
SETTLE_SECONDS = 90.0

pytestmark = pytest.mark.slow


@pytest.fixture
def sandbox_config(sandbox_config: SandboxConfig) -> SandboxConfig:
    """The generic tenant with strict rotation and eight-second tokens."""
    return strict_rotation(
        sandbox_config, access_token_lifetime=8, sizes={"Condition": 4, "Observation": 8}
    )


@dataclass
class TokenGateway:
    """The token endpoint the connections use: forwards to the EHR's, killing where armed."""

    http: aiohttp.ClientSession
    upstream: str
    url: str = ""
    #: ``before_ehr`` or ``after_rotation``: the next refresh kills the victim at that point.
    armed: str | None = None
    victim: Worker | None = None
    fired: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        mode, self.armed = self.armed, None
        if mode == "before_ehr":
            self._kill()
            return web.Response(status=503)
        headers = {
            name: request.headers[name]
            for name in ("Authorization", "Content-Type", "Accept")
            if name in request.headers
        }
        async with self.http.post(self.upstream, data=body, headers=headers) as upstream:
            answer = await upstream.read()
            status = upstream.status
            content_type = upstream.headers.get("Content-Type", "application/json")
            retry_after = upstream.headers.get("Retry-After")
        if mode == "after_rotation" and status != 200:
            # A refused refresh (a grant an earlier kill already lost) rotated nothing: the
            # kill waits for one that does.
            self.armed = mode
        elif mode == "after_rotation":
            # The EHR has rotated the grant's refresh token; the worker dies before it hears.
            self._kill()
            return web.Response(status=502)
        extra = {"Retry-After": retry_after} if retry_after else {}
        return web.Response(
            status=status, body=answer, headers={"Content-Type": content_type, **extra}
        )

    def _kill(self) -> None:
        assert self.victim is not None
        self.victim.kill()
        self.fired.set()


async def _gateway(
    http: aiohttp.ClientSession, upstream: str
) -> tuple[TokenGateway, web.AppRunner]:
    gate = TokenGateway(http, upstream)
    app = web.Application()
    app.router.add_post("/token", gate.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    gate.url = f"http://{host}:{port}/token"
    return gate, runner


async def test_sigkill_during_refresh_and_pull_loses_only_unstored_rotations(
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)  # noqa: S311 - kill timing, not security
    fleet = await make_fleet(sessionmaker, vault, http, sandbox, GENERIC_TENANT, CONNECTIONS, TYPES)
    expected = await nancys_record(sandbox, http, TYPES)
    gate, gate_runner = await _gateway(http, sandbox.urls(GENERIC_TENANT).token)
    async with sessionmaker.begin() as session:
        await session.execute(update(Connection).values(token_endpoint=gate.url))
    env = worker_env(
        settings,
        tick_seconds=0.3,
        lease_seconds=3,
        refresh_margin_seconds=4,
        min_refresh_interval_seconds=2,
        sync_interval_seconds=3600,
        claim_batch_size=10,
        sync_concurrency=SYNC_CONCURRENCY,
        log_level="WARNING",
    )
    # Pulls take a few hundred milliseconds, so a kill can be aimed inside one.
    sandbox.tenant(GENERIC_TENANT).faults = [FaultSpec(kind="latency", latency_ms=80)]
    started = time.monotonic()
    interrupted_pulls = 0
    try:
        for number, where in enumerate(KILLS):
            worker = await Worker.start(env, tmp_path / f"crash-{number}.log")
            gate.victim = worker
            async with asyncio.timeout(TRIGGER_SECONDS):
                if where in ("before_ehr", "after_rotation"):
                    gate.fired.clear()
                    gate.armed = where
                    await gate.fired.wait()
                elif where == "pull":
                    await _make_sync_due(sessionmaker)
                    await wait_until(
                        functools.partial(_pull_running, sessionmaker, worker),
                        within=TRIGGER_SECONDS,
                    )
                    worker.kill()
                else:
                    await wait_until(
                        functools.partial(_leasing, sessionmaker, worker), within=TRIGGER_SECONDS
                    )
                    await asyncio.sleep(rng.uniform(0.05, 1.0))
                    worker.kill()
            assert await worker.wait() == -9, worker.log()[-2000:]
            gate.armed = None
        interrupted_pulls = await _count_running(sessionmaker)

        # Recovery: two healthy workers, every connection's pull due again.
        sandbox.tenant(GENERIC_TENANT).faults = []
        settle_from = await _make_sync_due(sessionmaker)
        healthy = [await Worker.start(env, tmp_path / f"healthy-{i}.log") for i in range(2)]
        try:
            await wait_until(lambda: _settled(sessionmaker, settle_from), within=SETTLE_SECONDS)
        finally:
            codes = [await w.terminate() for w in healthy]
        assert codes == [0, 0], [w.log()[-2000:] for w in healthy]
    finally:
        await gate_runner.cleanup()
    elapsed = time.monotonic() - started

    state = await snapshot(sessionmaker, vault)
    # A rotation the EHR made that syncsvc never stored: the only way a grant may be lost.
    unstored = {
        cid: grant_of(sandbox, fleet, cid).refresh_count - (state.versions[cid] - 1)
        for cid in fleet.ids
    }
    assert set(unstored.values()) <= {0, 1}, unstored  # never a double, never more than one
    lost = {cid for cid, n in unstored.items() if n == 1}
    after_rotation_kills = KILLS.count("after_rotation")
    # Each kill after a rotation loses that grant; any kill may also catch other refreshes of
    # the dying worker in the same window (pulls begin with one when tokens are this short).
    assert after_rotation_kills <= len(lost) <= len(KILLS) * SYNC_CONCURRENCY
    for cid in fleet.ids:
        grant = grant_of(sandbox, fleet, cid)
        connection = state.connections[cid]
        if cid in lost:
            # Presenting the retired token was caught by reuse detection: the patient must
            # reconnect (or, not yet retried, the connection still waits to find out).
            assert connection.status in ("needs_reauth", "active")
            if connection.status == "needs_reauth":
                assert grant.revoked_reason == "refresh token reuse"
            continue
        assert connection.status == "active", (cid, connection.status_reason)
        assert not grant.revoked, grant.revoked_reason
        assert state.refresh_tokens[cid] == grant.refresh_token
        assert set(state.resources.get(cid, {})) == expected, cid
    duplicates = [n for keys in state.resources.values() for n in keys.values() if n > 1]
    assert duplicates == []
    finished = [r for r in state.runs if r.outcome != "running"]
    assert overlapping(finished) == []
    assert interrupted_pulls >= KILLS.count("pull")
    # Leases left behind are the killed workers' own, expired (nobody needed those rows since).
    now = utcnow()
    held = [c for c in state.connections.values() if c.lease_owner is not None]
    assert all(c.lease_until is not None and c.lease_until <= now for c in held)

    reauth = sum(state.connections[cid].status != "active" for cid in lost)
    # The figures the issue asks to report (shown with -s).
    print(
        f"\ncrash: {CONNECTIONS} connections, {len(KILLS)} SIGKILLs ({', '.join(KILLS)}) in "
        f"{elapsed:.1f} s; pulls interrupted {interrupted_pulls}; grants lost to an unstored "
        f"rotation {len(lost)} (kills right after a rotation {after_rotation_kills}); other "
        f"connections lost 0 (needs_reauth {reauth} of the {len(lost)}); "
        f"duplicate resources 0; missing resources 0"
    )


def _owned_by(worker: Worker) -> str:
    # Lease owners name host, pid and a random suffix (syncsvc.sync.context.new_owner_id).
    return f"%:{worker.process.pid}:%"


async def _make_sync_due(sessionmaker: Sessionmaker) -> dt.datetime:
    now = utcnow()
    async with sessionmaker.begin() as session:
        await session.execute(update(Connection).values(next_sync_at=now))
    return now


async def _pull_running(sessionmaker: Sessionmaker, worker: Worker) -> bool:
    """Whether ``worker`` has a pull in progress."""
    async with sessionmaker() as session:
        return bool(
            await session.scalar(
                select(
                    exists().where(
                        SyncRun.outcome == "running", SyncRun.owner.like(_owned_by(worker))
                    )
                )
            )
        )


async def _count_running(sessionmaker: Sessionmaker) -> int:
    async with sessionmaker() as session:
        rows = await session.scalars(select(SyncRun.id).where(SyncRun.outcome == "running"))
        return len(list(rows))


async def _leasing(sessionmaker: Sessionmaker, worker: Worker) -> bool:
    """Whether ``worker`` holds a lease (it is working)."""
    async with sessionmaker() as session:
        return bool(
            await session.scalar(
                select(exists().where(Connection.lease_owner.like(_owned_by(worker))))
            )
        )


async def _settled(sessionmaker: Sessionmaker, since: dt.datetime) -> bool:
    """Every active connection has pulled successfully since ``since``, and no lease is held."""
    async with sessionmaker() as session:
        rows = list(await session.scalars(select(Connection)))
        ok_since = set(
            await session.scalars(
                select(SyncRun.connection_id).where(
                    SyncRun.outcome == "ok", SyncRun.started_at >= since
                )
            )
        )
    return all(row.status != "active" or row.id in ok_since for row in rows)
