"""After the fleet's simulated day, in the same run: syncsvc beside a team's loop, and N workers.

Two measurements on the fleet the day left behind (see :mod:`syncsvc.bench.fleet_day`), at the
same added latency:

* **The same incremental work three ways.** A sample of the fleet is brought current once by
  syncsvc's runner (each connection due for a refresh and a sync now), then by a ``fhirclient``
  loop and by a ``fhirpy`` loop (:mod:`syncsvc.bench.peer_fleet`: refresh by plain HTTP, the
  Patient, each other type with ``_lastUpdated`` where the EHR takes it). Each is timed (wall
  and CPU; syncsvc's CPU counted as the day counts it, the database's included) and its
  requests are read from the sandbox's log. Both clocks move on between the passes, so no
  refresh meets the EHR's minimum interval.
* **Worker processes on one PostgreSQL** (PostgreSQL only). The clocks go back to the wall
  clock, then 1, 2 and 4 worker processes (each one ``Services`` with its background tick, as
  ``syncsvc worker`` runs) work the whole fleet due for a sync; the time until every connection
  has finished a run gives syncs per second, and the database's run records prove that each
  due sync ran exactly once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.bench import fleet_ops, world
from syncsvc.bench.fleet_day import FLEET_TYPES, Meter, SimulatedDay
from syncsvc.bench.ingest import BenchError, unlimited
from syncsvc.bench.peer_fleet import PeerConnection, run_pass
from syncsvc.bench.peers import PEERS, PeerName, peer_available
from syncsvc.db.engine import POOL_OVERFLOW
from syncsvc.db.models.connections import Connection
from syncsvc.db.models.records import SyncRun
from syncsvc.sandbox.config import SandboxConfig
from syncsvc.settings import Settings
from syncsvc.sync.context import utcnow
from syncsvc.sync.credentials import load_tokens
from syncsvc.sync.runner import run_due

#: Simulated seconds both clocks move on before each pass: more than any EHR's minimum
#: interval between two refreshes of one grant (Cerner's is 60 s).
REFRESH_GAP_SECONDS = 120
#: Seconds a worker process ticks at while the fleet is worked.
WORKER_TICK_SECONDS = 0.2
#: PostgreSQL sends a backend's counters at the latest this long after it went idle.
STATS_FLUSH_SECONDS = 11.0
#: Per database: what its backends wrote (pg_stat_database), and the server's WAL (pg_stat_wal).
_WRITE_COUNTERS = """
SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') AS wal_position,
       d.xact_commit, d.tup_inserted, d.tup_updated, d.tup_deleted, d.blks_read, d.blks_hit,
       w.wal_records, w.wal_fpi, w.wal_bytes
FROM pg_stat_database AS d, pg_stat_wal AS w
WHERE d.datname = current_database()
"""


@dataclass
class CompareOptions:
    """How much of the fleet the passes take, and the worker counts."""

    #: Connections of the comparison (the fhirclient loop works one at a time).
    sample: int = 100
    workers: tuple[int, ...] = (1, 2, 4)
    #: Read PostgreSQL's write counters around the day (waits for them once, ~11 s).
    writes: bool = True

    @property
    def wanted(self) -> bool:
        """Whether anything is to be measured after the day at all."""
        return bool(self.sample or self.workers or self.writes)


@dataclass
class Pass:
    """One way of bringing the sample current once."""

    who: str
    connections: int
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    requests: int = 0
    resources: int = 0
    detail: str = ""
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The pass as JSON."""
        return dataclasses.asdict(self) | {
            "cpu_ms_per_connection": round(self.cpu_ms_per_connection, 2)
        }

    @property
    def cpu_ms_per_connection(self) -> float:
        """CPU milliseconds per connection brought current."""
        return self.cpu_seconds * 1000 / self.connections if self.connections else 0.0


@dataclass
class WorkersPass:
    """The whole fleet due for a sync, worked by ``workers`` processes on one database."""

    workers: int
    connections: int
    seconds: float
    requests: int
    runs: int
    connections_run_twice: int
    connections_not_run: int
    runs_per_worker: list[int]

    @property
    def syncs_per_second(self) -> float:
        """Finished syncs per second of wall time."""
        return self.connections / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        """The pass as JSON."""
        return dataclasses.asdict(self) | {"syncs_per_second": round(self.syncs_per_second, 2)}


@dataclass
class DayWrites:
    """What PostgreSQL wrote during the simulated day, from its own counters."""

    connections: int
    seconds: float = 0.0
    counters: dict[str, float] = field(default_factory=dict)

    def per_day(self, name: str) -> float:
        """Counter ``name`` per connection-day."""
        return self.counters.get(name, 0.0) / self.connections if self.connections else 0.0

    def to_json(self) -> dict[str, Any]:
        """The writes as JSON."""
        return {
            "connections": self.connections,
            "wall_seconds": round(self.seconds, 1),
            "during_the_day": self.counters,
            "per_connection_day": {k: round(self.per_day(k), 2) for k in self.counters},
        }

    def lines(self) -> list[str]:
        """The writes for a terminal."""
        wal = self.per_day("wal_position")
        return [
            "PostgreSQL during the day (server counters; WAL is the whole server's):",
            f"  per connection-day: WAL {wal:,.0f} B ({self.per_day('wal_records'):,.1f} "
            f"records, {self.per_day('wal_fpi'):,.2f} full-page images), rows inserted "
            f"{self.per_day('tup_inserted'):,.1f}, updated {self.per_day('tup_updated'):,.1f}, "
            f"deleted {self.per_day('tup_deleted'):,.1f}, commits "
            f"{self.per_day('xact_commit'):,.1f}",
            f"  so 1,000,000 connections write {wal * 1e6 / 86_400 / 2**20:,.2f} MiB of WAL "
            f"a second and 10,000,000 {wal * 1e7 / 86_400 / 2**20:,.1f} MiB/s; updates "
            f"{self.per_day('tup_updated') * 1e7 / 86_400:,.0f}/s at 10,000,000",
        ]


@dataclass
class Comparison:
    """What the two measurements after the day found."""

    latency_ms: int
    started: str = ""
    passes: list[Pass] = field(default_factory=list)
    workers: list[WorkersPass] = field(default_factory=list)
    writes: DayWrites | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The figures as JSON."""
        return {
            "latency_ms": self.latency_ms,
            "started": self.started,
            "passes": [p.to_json() for p in self.passes],
            "workers": [w.to_json() for w in self.workers],
            "writes": self.writes.to_json() if self.writes is not None else None,
            "notes": self.notes,
        }

    def lines(self) -> list[str]:
        """The figures for a terminal."""
        lines = self.writes.lines() if self.writes is not None else []
        lines += [
            f"the same incremental work (refresh, Patient, each type since the last sync) at "
            f"{self.latency_ms} ms, started {self.started}:"
        ]
        syncsvc = next((p for p in self.passes if p.who == "syncsvc" and not p.error), None)
        for p in self.passes:
            if p.error:
                lines.append(f"  {p.who}: failed: {p.error}")
                continue
            ratio = (
                f"; {p.cpu_seconds / syncsvc.cpu_seconds:.1f}x syncsvc's CPU, "
                f"{p.seconds / syncsvc.seconds:.1f}x its wall time"
                if syncsvc is not None
                and p is not syncsvc
                and syncsvc.cpu_seconds
                and syncsvc.seconds
                else ""
            )
            lines.append(
                f"  {p.who}: {p.connections} connections in {p.seconds:.1f} s wall, CPU "
                f"{p.cpu_seconds:.2f} s ({p.cpu_ms_per_connection:.1f} ms per connection), "
                f"{p.requests} requests, {p.resources} resources{ratio}"
                + (f" ({p.detail})" if p.detail else "")
            )
        if self.workers:
            lines.append("worker processes on one PostgreSQL, the whole fleet due for a sync:")
        for w in self.workers:
            lines.append(
                f"  {w.workers} worker(s): {w.connections} syncs in {w.seconds:.1f} s = "
                f"{w.syncs_per_second:.1f} syncs/s, {w.requests} requests; runs {w.runs}, "
                f"run twice {w.connections_run_twice}, not run {w.connections_not_run}; runs "
                f"per worker {w.runs_per_worker}"
            )
        lines.extend(f"  note: {note}" for note in self.notes)
        return lines


class AfterDay:
    """The hook the fleet runs after its day: the comparison, then the worker passes."""

    def __init__(
        self,
        *,
        options: CompareOptions,
        config: SandboxConfig,
        settings: Settings,
        work: Path,
        latency_ms: int,
        say: Callable[[str], None],
    ) -> None:
        self.options = options
        self.config = config
        self.settings = settings
        self.work = work
        self.say = say
        self.figures = Comparison(latency_ms=latency_ms)
        #: Each connection's refresh token as the last loop left it.
        self.rotated: dict[str, str] = {}
        self._writes_before: dict[str, float] | None = None
        self._day_started = 0.0

    async def before(self, day: SimulatedDay) -> None:
        """Read PostgreSQL's write counters as the day starts."""
        if day.postgres and self.options.writes:
            self._writes_before = await _write_counters(day)
        self._day_started = time.perf_counter()

    async def writes(self, day: SimulatedDay) -> None:
        """What PostgreSQL wrote since :meth:`before`."""
        if self._writes_before is None:
            return
        seconds = time.perf_counter() - self._day_started
        position = await _write_counters(day)
        # The service's backends send their counters once idle: wait for the last of them.
        await asyncio.sleep(STATS_FLUSH_SECONDS)
        after = await _write_counters(day) | {"wal_position": position["wal_position"]}
        self.figures.writes = DayWrites(
            connections=len(day.ids),
            seconds=seconds,
            counters={k: after[k] - self._writes_before[k] for k in after},
        )
        if day.options.catch_up:
            self.figures.notes.append("the writes during the day include the catch-up's")

    async def __call__(self, day: SimulatedDay) -> None:
        """Measure both on the fleet ``day`` left behind."""
        self.figures.started = utcnow().strftime("%Y-%m-%d %H:%M UTC")
        await self.writes(day)
        sample = day.ids[: self.options.sample]
        if sample:
            self.figures.passes.append(await self.syncsvc_pass(day, sample))
        for name in PEERS if sample else ():
            if not peer_available(name):
                self.figures.notes.append(f"{name} is not installed: no {name} pass")
                continue
            await day.advance(REFRESH_GAP_SECONDS)
            self.figures.passes.append(await self.peer_pass(day, name, sample))
        if day.postgres and self.options.workers:
            await day.advance(-day.offset)
            for count in self.options.workers:
                self.figures.workers.append(await self.workers_pass(day, count))
        elif self.options.workers:
            self.figures.notes.append("worker processes share one PostgreSQL: not run on SQLite")

    async def syncsvc_pass(self, day: SimulatedDay, sample: list[str]) -> Pass:
        """syncsvc's runner brings the sample current: a refresh and a sync each, if due."""
        await day.advance(REFRESH_GAP_SECONDS)
        await world.make_due(day.sessionmaker, sample, sync=True, refresh=True)
        await day.count_requests()
        meter = Meter(day.ctx.decoder.worker_pids)
        server = await day.server_cpu()
        wall = time.perf_counter()
        with meter.measuring():
            report = await run_due(
                day.ctx, connection_ids=sample, limiter=unlimited(), max_batches=1_000_000
            )
        seconds = time.perf_counter() - wall
        meter.add_server(server, await day.server_cpu())
        if report.failures or report.sync.get("ok", 0) != len(sample):
            raise BenchError(f"syncsvc's pass did not succeed: {report.to_json()}")
        self.say(f"fleet: syncsvc's pass over {len(sample)} in {seconds:.1f} s")
        return Pass(
            who="syncsvc",
            connections=len(sample),
            seconds=seconds,
            cpu_seconds=meter.cpu.total,
            requests=await day.count_requests(),
            resources=sum(report.resources.values()),
            detail=f"refreshes {dict(report.refresh)}; CPU counted as the day counts it",
        )

    async def peer_pass(self, day: SimulatedDay, name: PeerName, sample: list[str]) -> Pass:
        """A team's loop with ``name`` brings the sample current; the next one starts from
        the refresh tokens it left (a rolling refresh token replaces the last)."""
        connections = await self.peer_connections(day, sample)
        await day.count_requests()
        result = await asyncio.to_thread(
            run_pass,
            name,
            connections,
            self.work / f"{name}-fleet.db",
        )
        logged = await day.count_requests()
        if "error" in result:
            return Pass(who=name, connections=len(sample), error=str(result["error"]))
        self.rotated = dict(result["rotated"])
        self.say(f"fleet: {name}'s pass over {len(sample)} in {result['seconds']:.1f} s")
        return Pass(
            who=name,
            connections=len(sample),
            seconds=float(result["seconds"]),
            cpu_seconds=float(result["cpu_seconds"]),
            requests=logged,
            resources=int(result["items"]),
            detail=f"its own count of requests {result['requests']}",
        )

    async def peer_connections(self, day: SimulatedDay, sample: list[str]) -> list[PeerConnection]:
        """What a team's loop would hold for each connection of the sample."""
        found: list[PeerConnection] = []
        async with day.sessionmaker() as session:
            for chunk in world.chunks(sample):
                rows = await session.scalars(select(Connection).where(Connection.id.in_(chunk)))
                for connection in rows:
                    tokens = await load_tokens(session, day.ctx.vault, connection.id)
                    if tokens is None or tokens.refresh_token is None:
                        raise BenchError("a fleet connection has no refresh token")
                    sandbox_tenant = day.tenant_names[connection.tenant_id]
                    found.append(
                        PeerConnection(
                            key=connection.id,
                            patient=connection.patient_id,
                            fhir_base=connection.fhir_base,
                            token_url=connection.token_endpoint,
                            client_id=connection.client_id,
                            refresh_token=self.rotated.get(connection.id, tokens.refresh_token),
                            types=self.types_of(sandbox_tenant),
                            since=_instant(connection.last_sync_at or day.now()),
                        )
                    )
        return found

    def types_of(self, sandbox_tenant: str) -> list[tuple[str, bool]]:
        """The fleet's types but the Patient, each with whether the tenant takes
        ``_lastUpdated``."""
        tenant = self.config.tenant(sandbox_tenant)
        supported = set(tenant.policy.last_updated_types) if tenant is not None else set()
        return [(name, name in supported) for name in FLEET_TYPES if name != "Patient"]

    async def workers_pass(self, day: SimulatedDay, count: int) -> WorkersPass:
        """``count`` worker processes work the whole fleet due for a sync, once."""
        ids = day.ids
        settings = self.settings.replace(
            tick_seconds=WORKER_TICK_SECONDS,
            sync_concurrency=day.options.concurrency,
            # Small claims, so the due connections spread over the workers instead of the
            # first tick leasing them all.
            claim_batch_size=max(len(ids) // (4 * count), 1),
            # Within what the server has left: a worker that cannot open a transaction fails
            # the run it is working, which another worker then runs again.
            db_pool_size=await worker_pool_size(day.sessionmaker, count),
        )
        with fleet_ops.scale_workers(settings, count) as owners:
            await day.count_requests()
            await world.make_due(day.sessionmaker, ids, sync=True, refresh=False)
            seconds = await wait_for_runs(day.sessionmaker, ids, owners)
        # The day's runs carry the day's clock, a day ahead: the workers' own are told by owner.
        runs = await runs_per_connection(day.sessionmaker, ids, owners)
        figures = WorkersPass(
            workers=count,
            connections=len(ids),
            seconds=seconds,
            requests=await day.count_requests(),
            runs=sum(n for n, _ in runs.values()),
            connections_run_twice=sum(1 for n, _ in runs.values() if n > 1),
            connections_not_run=len(ids) - len(runs),
            runs_per_worker=sorted(Counter(o for _, o in runs.values()).values(), reverse=True),
        )
        if figures.connections_run_twice or figures.connections_not_run:
            raise BenchError(f"a due sync did not run exactly once: {figures.to_json()}")
        self.say(f"fleet: {count} worker(s): {figures.syncs_per_second:.1f} syncs/s")
        return figures


#: Connections PostgreSQL keeps for superusers (``superuser_reserved_connections``), and a
#: margin for this process's own reads while the workers run.
SERVER_RESERVE = 3 + 4
#: The least pool a worker gets, however full the server is.
MIN_WORKER_POOL = 2


async def worker_pool_size(sessionmaker: async_sessionmaker[AsyncSession], count: int) -> int:
    """The pool each of ``count`` worker processes gets, so that with their overflow they fit in
    what the server has left (its ``max_connections`` less the connections open now)."""
    async with sessionmaker() as session:
        limit = int(await session.scalar(text("SHOW max_connections")) or 0)
        open_now = int(await session.scalar(text("SELECT count(*) FROM pg_stat_activity")) or 0)
    room = max(limit - open_now - SERVER_RESERVE, 0)
    return max(MIN_WORKER_POOL, room // count - POOL_OVERFLOW)


async def runs_per_connection(
    sessionmaker: async_sessionmaker[AsyncSession], ids: Sequence[str], owners: Sequence[str]
) -> dict[str, tuple[int, str]]:
    """How many runs each connection got from ``owners`` and who ran its last, from the
    database's run records."""
    runs: dict[str, tuple[int, str]] = {}
    async with sessionmaker() as session:
        for chunk in world.chunks(ids):
            rows = await session.execute(
                select(SyncRun.connection_id, SyncRun.owner).where(
                    SyncRun.connection_id.in_(chunk), SyncRun.owner.in_(list(owners))
                )
            )
            for connection_id, owner in rows.all():
                seen, _ = runs.get(connection_id, (0, ""))
                runs[connection_id] = (seen + 1, str(owner))
    return runs


async def wait_for_runs(
    sessionmaker: async_sessionmaker[AsyncSession], ids: Sequence[str], owners: Sequence[str]
) -> float:
    """Seconds until each connection has a finished run by one of ``owners`` and no lease."""
    started = time.perf_counter()
    while time.perf_counter() - started < fleet_ops.SCALEOUT_TIMEOUT_SECONDS:
        done = leased = 0
        async with sessionmaker() as session:
            for chunk in world.chunks(ids):
                done += (
                    await session.scalar(
                        select(func.count(func.distinct(SyncRun.connection_id))).where(
                            SyncRun.connection_id.in_(chunk),
                            SyncRun.owner.in_(list(owners)),
                            SyncRun.outcome != "running",
                        )
                    )
                    or 0
                )
                leased += (
                    await session.scalar(
                        select(func.count()).where(
                            Connection.id.in_(chunk), Connection.lease_owner.is_not(None)
                        )
                    )
                    or 0
                )
        if done == len(ids) and leased == 0:
            return time.perf_counter() - started
        await asyncio.sleep(fleet_ops.POLL_SECONDS)
    raise BenchError("the worker processes did not finish the fleet in time")


async def _write_counters(day: SimulatedDay) -> dict[str, float]:
    async with day.sessionmaker() as session:
        await session.execute(text("SELECT pg_stat_clear_snapshot()"))
        row = (await session.execute(text(_WRITE_COUNTERS))).mappings().one()
        return {name: float(value or 0) for name, value in row.items()}


def _instant(moment: dt.datetime) -> str:
    # ``+00:00`` would need escaping in a query string; ``Z`` says the same.
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
