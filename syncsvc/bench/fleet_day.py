"""The fleet scenario: N connections kept current through one simulated day, compressed in time.

What is simulated: the day's *work*, not its wall-clock length. syncsvc's clock and the sandbox's
clock move together in jumps (to the next moment anything is due, at least ``step`` simulated
seconds on); at each stop the real runner claims and works whatever the database says is due,
against the sandbox in its own process with ``latency_ms`` added to every FHIR and token
request. Each connection gets ``syncs_per_day`` incremental syncs and every refresh syncsvc's own
refresh schedule asks for in that day (Cerner-shaped 570 s access tokens without rotation, Epic-
shaped rolling refresh tokens with 3,600 s access tokens, half the fleet each). Before each stop,
about 1% of the connections whose sync falls due get a few new Observations at the sandbox.

CPU is counted only while the runner works a stop (the bookkeeping between stops is the bench's):
the event loop's thread, the process's other threads (on SQLite, the database: aiosqlite runs each
connection in a thread of this process), the page-decoding processes, and on PostgreSQL the
server backends of the benchmark's own database connections, read from ``/proc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from sqlalchemy import event, func, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.bench import world
from syncsvc.bench.catch_up import (
    IN_FLIGHT_LATENCIES_MS,
    CatchUpFigures,
    InFlightFigures,
    catch_up,
    in_flight,
)
from syncsvc.bench.ingest import JSON, BenchError, set_latency, unlimited
from syncsvc.bench.measure import (
    LoggedRequests,
    cpu_seconds,
    peak_rss_mib,
    reset_peak_rss,
    thread_cpu_seconds,
)
from syncsvc.db.models.connections import Connection
from syncsvc.db.models.records import SyncRun
from syncsvc.sandbox.config import COMPARTMENT_TYPES, PatientSpec, TenantConfig, vendor_policy
from syncsvc.sync.context import SyncContext, utcnow
from syncsvc.sync.runner import PullOptions, Workload, WorkReport, run_due

CERNER = "fleet-cerner"
EPIC = "fleet-epic"
DAY_SECONDS = 86_400
#: What each fleet patient holds, and which of it syncsvc pulls (the Patient and three types).
FLEET_TYPES = ("Patient", "Observation", "Condition", "AllergyIntolerance")
FLEET_SIZES = {"Observation": 4, "Condition": 2, "AllergyIntolerance": 1}
#: Share of due syncs that find new resources, and how many they find.
NEW_SHARE = 0.01
NEW_PER_SYNC = 3
#: Connections due this much after a stop's moment are looked at with it (and matched to runs).
RELEASE_SLACK_SECONDS = 5
#: Refresh outcomes that sent nothing to the token endpoint.
NO_REQUEST = ("not_due", "lost_lease")
#: Tables whose rows and size are compared before and after the day.
TABLES = (
    "connections",
    "credentials",
    "resources",
    "resource_history",
    "resource_cursors",
    "sync_states",
    "sync_runs",
    "events",
)


def patient(tenant: str, index: int) -> str:
    """The sandbox id of a fleet patient."""
    return f"{tenant}-{index:06d}"


def split(size: int) -> dict[str, int]:
    """How many of the fleet's connections each tenant holds (Cerner gets the odd one)."""
    return {CERNER: size - size // 2, EPIC: size // 2}


def tenants(size: int) -> list[TenantConfig]:
    """The sandbox tenants of a fleet of ``size``: one Cerner-shaped, one Epic-shaped."""
    configs = []
    for tenant_id, count in split(size).items():
        sizes = {name: FLEET_SIZES.get(name, 0) for name in COMPARTMENT_TYPES}
        specs = [
            PatientSpec(id=patient(tenant_id, i), given="Fleet", family=f"F{i}", sizes=sizes)
            for i in range(count)
        ]
        if tenant_id == CERNER:
            policy = vendor_policy("cerner")
        else:
            # Epic drops offline access only for public apps: this registration keeps it. Its
            # Observation category rule is lifted: one search per type for both vendors.
            policy = vendor_policy("epic", drop_offline_for_public=False, required_categories={})
        configs.append(TenantConfig(id=tenant_id, name=tenant_id, policy=policy, patients=specs))
    return configs


@dataclass
class FleetOptions:
    """The size and shape of the simulated day."""

    size: int = 10_000
    syncs_per_day: int = 6
    latency_ms: int = 300
    #: Simulated seconds the clocks move on at least between two stops.
    step_seconds: int = 60
    #: Connections one process works at once while measured (the setting ``sync_concurrency``).
    concurrency: int = 100
    seed: int = 20261205
    #: Run the simulated day; and then the catch-up after an outage, and the in-flight passes.
    day: bool = True
    catch_up: bool = False
    in_flight: bool = False
    #: EHR latencies of the in-flight passes.
    in_flight_latencies_ms: tuple[int, ...] = IN_FLIGHT_LATENCIES_MS


@dataclass
class Cpu:
    """CPU seconds by where they were spent."""

    loop: float = 0.0
    threads: float = 0.0
    decoders: float = 0.0
    database_server: float = 0.0

    @property
    def total(self) -> float:
        """Every CPU second counted."""
        return self.loop + self.threads + self.decoders + self.database_server


@dataclass
class FleetFigures:
    """What one simulated day measured."""

    options: FleetOptions
    database: str
    machine: dict[str, Any]
    started: str
    cpu: Cpu = field(default_factory=Cpu)
    wall_seconds: float = 0.0
    stops: int = 0
    syncs: int = 0
    refreshes: Counter[str] = field(default_factory=Counter)
    sync_outcomes: Counter[str] = field(default_factory=Counter)
    new_resources: int = 0
    requests_sandbox: int = 0
    requests_syncsvc: int = 0
    rows_before: dict[str, int] = field(default_factory=dict)
    rows_after: dict[str, int] = field(default_factory=dict)
    bytes_before: int = 0
    bytes_after: int = 0
    bytes_method: str = ""
    database_cpu_method: str = ""
    peak_in_flight: int = 0
    peak_rss_service_mib: float = 0.0
    peak_rss_decoders_mib: float = 0.0
    lags: list[float] = field(default_factory=list)
    #: From the moment a stop released the due work to the start of each sync.
    service_lags: list[float] = field(default_factory=list)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    #: SQL statements and committed transactions the service sent while it worked the stops.
    statements: int = 0
    commits: int = 0
    catch_up: CatchUpFigures | None = None
    in_flight: list[InFlightFigures] = field(default_factory=list)

    def per_day(self, value: float) -> float:
        """``value`` per connection-day."""
        return value / self.options.size if self.options.size else 0.0

    def lag(self, share: float, *, service: bool = False) -> float:
        """The ``share`` quantile of the sync lag in seconds (0 when nothing synced)."""
        values = self.service_lags if service else self.lags
        if not values:
            return 0.0
        ordered = sorted(values)
        return ordered[min(int(share * len(ordered)), len(ordered) - 1)]

    @property
    def rows_written(self) -> int:
        """Rows added over every compared table."""
        return sum(self.rows_after.get(t, 0) - self.rows_before.get(t, 0) for t in TABLES)

    @property
    def cpu_per_connection_day(self) -> float:
        """CPU seconds per connection-day, everything counted."""
        return self.per_day(self.cpu.total)

    @property
    def connections_per_core(self) -> float:
        """Connections one core keeps current at this cost."""
        cost = self.cpu_per_connection_day
        return DAY_SECONDS / cost if cost else 0.0

    def to_json(self) -> dict[str, Any]:
        """The figures as JSON."""
        shared: dict[str, Any] = {
            "options": dataclasses.asdict(self.options),
            "database": self.database,
            "machine": self.machine,
            "started": self.started,
        }
        if self.catch_up is not None:
            shared["catch_up"] = self.catch_up.to_json()
        if self.in_flight:
            shared["in_flight"] = [figures.to_json() for figures in self.in_flight]
        if not self.options.day:
            return shared
        return shared | {
            "database": self.database,
            "machine": self.machine,
            "started": self.started,
            "sync_concurrency": self.options.concurrency,
            "wall_seconds": round(self.wall_seconds, 1),
            "stops": self.stops,
            "syncs": self.syncs,
            "sync_outcomes": dict(self.sync_outcomes),
            "refreshes": dict(self.refreshes),
            "new_resources": self.new_resources,
            "cpu_seconds": dataclasses.asdict(self.cpu) | {"total": round(self.cpu.total, 3)},
            "cpu_seconds_per_connection_day": round(self.cpu_per_connection_day, 5),
            "database_cpu_method": self.database_cpu_method,
            "requests_per_connection_day": round(self.per_day(self.requests_sandbox), 3),
            "requests_sandbox": self.requests_sandbox,
            "requests_syncsvc": self.requests_syncsvc,
            "rows_written_per_connection_day": round(self.per_day(self.rows_written), 3),
            "rows_before": self.rows_before,
            "rows_after": self.rows_after,
            "bytes_written_per_connection_day": round(
                self.per_day(self.bytes_after - self.bytes_before), 1
            ),
            "bytes_method": self.bytes_method,
            "peak_requests_in_flight": self.peak_in_flight,
            "peak_rss_mib": {
                "service": round(self.peak_rss_service_mib, 1),
                "decoders": round(self.peak_rss_decoders_mib, 1),
            },
            "sync_lag_seconds": {
                "p50": round(self.lag(0.50), 2),
                "p95": round(self.lag(0.95), 2),
                "p99": round(self.lag(0.99), 2),
                "syncs": len(self.lags),
                "after_release": {
                    "p50": round(self.lag(0.50, service=True), 2),
                    "p95": round(self.lag(0.95, service=True), 2),
                    "p99": round(self.lag(0.99, service=True), 2),
                },
            },
            "syncs_per_connection_day": round(self.per_day(self.syncs), 3),
            "statements_per_connection_day": round(self.per_day(self.statements), 2),
            "commits_per_connection_day": round(self.per_day(self.commits), 2),
            "statements_per_sync": round(self.statements / self.syncs, 2) if self.syncs else 0,
            "connections_per_core": round(self.connections_per_core),
            "load_average": {"before": self.load_before, "after": self.load_after},
        }

    def lines(self) -> list[str]:
        """The figures for a terminal."""
        o = self.options
        c = self.cpu
        split_line = (
            f"  CPU s per connection-day: {self.cpu_per_connection_day:.4f} = service loop "
            f"{self.per_day(c.loop):.4f} + other service threads {self.per_day(c.threads):.4f} "
            f"+ decoders {self.per_day(c.decoders):.4f} + database server "
            f"{self.per_day(c.database_server):.4f}"
        )
        rows = ", ".join(
            f"{t} {self.rows_after.get(t, 0) - self.rows_before.get(t, 0):+,}" for t in TABLES
        )
        target = 0.086
        machine_line = (
            f"  machine: {self.machine['cores']} cores, {self.machine['cpu_model']}; "
            f"{self.database}; started {self.started}; load average before "
            f"{_load(self.load_before)}, after {_load(self.load_after)}"
        )
        after = self.catch_up.lines() if self.catch_up is not None else []
        after.extend(figures.line() for figures in self.in_flight)
        if not o.day:
            head = f"fleet: {o.size:,} connections, {o.latency_ms} ms per request (no day run)"
            return [head, machine_line, *after]
        return [
            f"fleet: {o.size:,} connections ({split(o.size)[CERNER]:,} Cerner-shaped, 570 s "
            f"tokens, no rotation; {split(o.size)[EPIC]:,} Epic-shaped, 3,600 s tokens, rolling "
            f"refresh), {o.syncs_per_day} incremental syncs each, {o.latency_ms} ms per request",
            machine_line,
            f"  simulated: one day ({DAY_SECONDS:,} s) of syncsvc's and the sandbox's clocks in "
            f"{self.stops:,} stops (>= {o.step_seconds} s apart), worked in "
            f"{self.wall_seconds:,.0f} s wall; sync_concurrency {o.concurrency}, tenant "
            "limits lifted",
            f"  work: {self.syncs:,} syncs ({self.per_day(self.syncs):.2f} per connection-day) "
            f"{dict(self.sync_outcomes)}, refreshes "
            f"{dict(self.refreshes)}, {self.new_resources:,} new resources",
            split_line,
            f"  database CPU: {self.database_cpu_method}",
            f"  requests per connection-day: {self.per_day(self.requests_sandbox):.2f} "
            f"(sandbox log: {self.requests_sandbox:,}; syncsvc's count: "
            f"{self.requests_syncsvc:,})",
            f"  rows written per connection-day: {self.per_day(self.rows_written):.2f} ({rows})",
            f"  bytes written per connection-day: "
            f"{self.per_day(self.bytes_after - self.bytes_before):,.0f} ({self.bytes_method})",
            f"  database round trips per connection-day: {self.per_day(self.statements):.1f} "
            f"statements, {self.per_day(self.commits):.1f} commits (per sync, its refreshes "
            f"included: {self.statements / max(self.syncs, 1):.1f} statements, "
            f"{self.commits / max(self.syncs, 1):.1f} commits)",
            f"  peak requests in flight: {self.peak_in_flight}; peak RSS: service "
            f"{self.peak_rss_service_mib:.0f} MiB, decoders {self.peak_rss_decoders_mib:.0f} MiB",
            f"  sync lag against schedule: p50 {self.lag(0.5):.1f} s, p95 {self.lag(0.95):.1f} s,"
            f" p99 {self.lag(0.99):.1f} s over {len(self.lags):,} syncs (includes up to "
            f"{o.step_seconds} s of stepping); after its stop released it: p50 "
            f"{self.lag(0.5, service=True):.1f} s, p95 {self.lag(0.95, service=True):.1f} s, "
            f"p99 {self.lag(0.99, service=True):.1f} s",
            f"  extrapolated: {self.connections_per_core:,.0f} connections per core at "
            f"{o.syncs_per_day} syncs a day (target >= 1,000,000: <= {target} CPU s per "
            f"connection-day): {'met' if self.cpu_per_connection_day <= target else 'MISSED'}",
            *after,
        ]


def _load(values: tuple[float, float, float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def machine() -> dict[str, Any]:
    """Cores and CPU model (Linux ``/proc/cpuinfo``)."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cores": os.cpu_count(), "cpu_model": model}


class Meter:
    """Adds up CPU by place, and the database round trips, over the stops it is entered for."""

    def __init__(self, decoder_pids: Sequence[int], engine: Engine | None = None) -> None:
        self.decoder_pids = list(decoder_pids)
        self.cpu = Cpu()
        self.engine = engine
        self.statements = 0
        self.commits = 0

    def _statement(self, *_: object) -> None:
        self.statements += 1

    def _commit(self, *_: object) -> None:
        self.commits += 1

    @contextlib.contextmanager
    def measuring(self) -> Iterator[None]:
        """Count the CPU spent inside the block (the database server's is added apart)."""
        main = os.getpid()
        process, loop = time.process_time(), thread_cpu_seconds(main)
        decoders = sum(cpu_seconds(pid) for pid in self.decoder_pids)
        engine = self.engine
        if engine is not None:
            # Counted on the engine: every statement and commit of the service's sessions.
            event.listen(engine, "before_cursor_execute", self._statement)
            event.listen(engine, "commit", self._commit)
        try:
            yield
        finally:
            if engine is not None:
                event.remove(engine, "before_cursor_execute", self._statement)
                event.remove(engine, "commit", self._commit)
            loop_spent = thread_cpu_seconds(main) - loop
            self.cpu.loop += loop_spent
            self.cpu.threads += max(time.process_time() - process - loop_spent, 0.0)
            self.cpu.decoders += sum(cpu_seconds(pid) for pid in self.decoder_pids) - decoders

    def add_server(self, before: dict[int, float], after: dict[int, float]) -> None:
        """Add the backends' CPU between two readings (a backend new since counts whole)."""
        self.cpu.database_server += sum(
            max(spent - before.get(pid, 0.0), 0.0) for pid, spent in after.items()
        )


class SimulatedDay:
    """One fleet, its two clocks and the day's stops."""

    def __init__(
        self,
        *,
        ctx: SyncContext,
        http: aiohttp.ClientSession,
        origin: str,
        connection_ids: Sequence[str],
        tenant_names: dict[str, str],
        options: FleetOptions,
        figures: FleetFigures,
        say: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.say = say
        self.offset = 0.0
        self.ctx = dataclasses.replace(ctx, clock=self.now)
        self.sessionmaker: async_sessionmaker[AsyncSession] = ctx.sessionmaker
        self.http = http
        self.origin = origin
        self.ids = list(connection_ids)
        self.tenant_names = tenant_names
        self.options = options
        self.figures = figures
        self.rng = random.Random(options.seed)  # noqa: S311 - which patients get news, not security
        self.postgres = figures.database == "postgresql"
        #: The stops' work, kept from one to the next as the scheduler keeps its own across
        #: ticks (what it has read of the tenants included).
        self.work = Workload(self.ctx, limiter=unlimited(), stop=None, pull=PullOptions())

    def now(self) -> dt.datetime:
        """syncsvc's simulated clock: the wall clock plus the offset the day has reached."""
        return utcnow() + dt.timedelta(seconds=self.offset)

    async def move_clocks(self, to: dt.datetime) -> None:
        """Move both clocks so it is ``to`` now (the sandbox's by the same amount)."""
        delta = (to - self.now()).total_seconds()
        await self.advance(delta)

    async def advance(self, seconds: float) -> None:
        """Move both clocks by ``seconds``."""
        self.offset += seconds
        url = f"{self.origin}/admin/clock/advance"
        body = orjson.dumps({"seconds": seconds})
        async with self.http.post(url, data=body, headers=JSON) as response:
            await response.read()
            if response.status != 200:
                raise BenchError(f"the sandbox refused to move its clock ({response.status})")

    async def set_latency(self, latency_ms: int) -> None:
        """Add ``latency_ms`` to every FHIR and token answer of the fleet's tenants."""
        for sandbox_tenant in self.tenant_names.values():
            await set_latency(self.http, self.origin, sandbox_tenant, latency_ms, token=True)

    async def schedule(self, start: dt.datetime) -> None:
        """Spread the fleet's first syncs over one interval and first refreshes over a token."""
        interval = DAY_SECONDS / self.options.syncs_per_day
        # Each sync is scheduled an interval after the last one started, which a stop may
        # have delayed by up to a step: room for that keeps every sync inside the day.
        spread = max(interval - (self.options.syncs_per_day + 1) * self.options.step_seconds, 0)
        count = len(self.ids)
        async with self.sessionmaker.begin() as session:
            rows: list[Any] = []
            for chunk in world.chunks(self.ids):
                rows.extend(
                    (
                        await session.execute(
                            select(Connection.id, Connection.tenant_id).where(
                                Connection.id.in_(chunk)
                            )
                        )
                    ).all()
                )
            # Tenants interleaved over the day, as patients connect: not one tenant, then the other.
            self.rng.shuffle(rows)
            for index, (cid, tenant_id) in enumerate(rows):
                lifetime = 570 if self.tenant_names[tenant_id] == CERNER else 3_600
                margin = self.ctx.settings.refresh_margin_seconds
                # Not before a minute has passed since the code exchange (Cerner throttles).
                first_refresh = 60 + self.rng.random() * max(lifetime - margin - 60, 1)
                await session.execute(
                    update(Connection)
                    .where(Connection.id == cid)
                    .values(
                        next_sync_at=start + dt.timedelta(seconds=spread * index / count),
                        next_refresh_at=start + dt.timedelta(seconds=first_refresh),
                        backoff_until=None,
                        failure_count=0,
                    )
                )

    async def due_syncs(self, now: dt.datetime) -> list[tuple[str, dt.datetime, str, str]]:
        """(id, when due, patient, tenant) of the fleet's connections due for a sync at ``now``."""
        async with self.sessionmaker() as session:
            rows = await session.execute(
                select(
                    Connection.id,
                    Connection.next_sync_at,
                    Connection.patient_id,
                    Connection.tenant_id,
                ).where(
                    Connection.tenant_id.in_(list(self.tenant_names)),
                    Connection.next_sync_at <= now,
                )
            )
            return [(r[0], r[1], r[2], r[3]) for r in rows.all() if r[1] is not None]

    async def next_due(self) -> dt.datetime | None:
        """The earliest moment any fleet connection is due for anything."""
        async with self.sessionmaker() as session:
            tenants = list(self.tenant_names)
            sync = await session.scalar(
                select(func.min(Connection.next_sync_at)).where(Connection.tenant_id.in_(tenants))
            )
            refresh = await session.scalar(
                select(func.min(Connection.next_refresh_at)).where(
                    Connection.tenant_id.in_(tenants)
                )
            )
        moments = [m for m in (sync, refresh) if m is not None]
        return min(moments) if moments else None

    async def add_news(self, due: Sequence[tuple[str, dt.datetime, str, str]]) -> None:
        """Give about 1% of the due connections' patients a few new Observations."""
        for _, _, patient_id, tenant_id in due:
            if self.rng.random() >= NEW_SHARE:
                continue
            sandbox_tenant = self.tenant_names[tenant_id]
            url = f"{self.origin}/admin/tenants/{sandbox_tenant}/patients/{patient_id}/Observation"
            for _ in range(NEW_PER_SYNC):
                body = orjson.dumps({"status": "final", "code": {"text": "fleet news"}})
                async with self.http.post(url, data=body, headers=JSON) as response:
                    await response.read()
                    if response.status >= 300:
                        raise BenchError(f"the sandbox refused a resource ({response.status})")
                self.figures.new_resources += 1

    async def count_requests(self) -> int:
        """Requests to the fleet's tenants in the sandbox's log since the last call (emptied)."""
        return (await self.read_log()).count

    async def read_log(self) -> LoggedRequests:
        """The fleet's requests in the sandbox's log since the last read (emptied)."""
        async with self.http.get(f"{self.origin}/admin/requests") as response:
            entries = orjson.loads(await response.read())
        async with self.http.delete(f"{self.origin}/admin/requests") as response:
            await response.read()
        tenants = set(self.tenant_names.values())
        fleet = [
            e
            for e in entries
            if "/admin/" not in e["url"] and (e["tenant_id"] or e["token_tenant"]) in tenants
        ]
        return LoggedRequests(len(fleet), max((e["in_flight"] for e in fleet), default=0))

    async def run_stop(self, meter: Meter, report: WorkReport) -> None:
        """Work everything due now as a scheduler tick does, counting its CPU (the requests in
        flight are read from the sandbox's log after it: a sampler in this process would have
        been counted as syncsvc's CPU)."""
        server = await self.server_cpu()
        with meter.measuring():
            try:
                await self.work.fill(report)
            except BaseException:
                self.work.cancel()
                raise
            finally:
                await self.work.drain()
        meter.add_server(server, await self.server_cpu())

    async def server_cpu(self) -> dict[int, float]:
        """CPU seconds of each PostgreSQL backend serving this process (none on SQLite)."""
        if not self.postgres:
            return {}
        return {pid: cpu_seconds(pid) for pid in await self.server_pids()}

    async def server_pids(self) -> list[int]:
        """PostgreSQL backends serving this process's connections (matched by client port)."""
        ports = own_tcp_ports()
        async with self.sessionmaker() as session:
            rows = await session.execute(
                text(
                    "SELECT pid, client_port FROM pg_stat_activity "
                    "WHERE backend_type = 'client backend' AND client_port IS NOT NULL"
                )
            )
            return [int(row.pid) for row in rows.all() if int(row.client_port) in ports]

    async def lags(
        self,
        due: Sequence[tuple[str, dt.datetime, str, str]],
        since: dt.datetime,
    ) -> None:
        """Each due sync's lag against its schedule, and after the stop released it."""
        scheduled = {cid: when for cid, when, _, _ in due}
        if not scheduled:
            return
        async with self.sessionmaker() as session:
            for chunk in world.chunks(list(scheduled)):
                rows = await session.execute(
                    select(SyncRun.connection_id, SyncRun.started_at).where(
                        SyncRun.started_at >= since, SyncRun.connection_id.in_(chunk)
                    )
                )
                for row in rows.all():
                    lag = row.started_at - scheduled[row.connection_id]
                    self.figures.lags.append(lag.total_seconds())
                    self.figures.service_lags.append((row.started_at - since).total_seconds())

    async def own_requests(self, start: dt.datetime, report: WorkReport) -> int:
        """Requests syncsvc says it made: its runs' FHIR requests and one per token request."""
        async with self.sessionmaker() as session:
            fhir = await session.scalar(
                select(func.coalesce(func.sum(SyncRun.requests), 0))
                .join(Connection, Connection.id == SyncRun.connection_id)
                .where(
                    Connection.tenant_id.in_(list(self.tenant_names)),
                    SyncRun.started_at >= start,
                )
            )
        token = sum(n for outcome, n in report.refresh.items() if outcome not in NO_REQUEST)
        return int(fhir or 0) + token

    async def run(self) -> WorkReport:
        """The whole day, stop by stop; returns what the runner did."""
        options = self.options
        start = self.now()
        end = start + dt.timedelta(seconds=DAY_SECONDS)
        await self.schedule(start)
        await self.count_requests()
        report = WorkReport()
        bind = self.sessionmaker.kw.get("bind")
        meter = Meter(self.ctx.decoder.worker_pids, getattr(bind, "sync_engine", None))
        reset_peak_rss()
        for pid in self.ctx.decoder.worker_pids:
            reset_peak_rss(pid)
        wall = time.perf_counter()
        step = dt.timedelta(seconds=options.step_seconds)
        moment = start
        said = 0
        while True:
            upcoming = await self.next_due()
            if upcoming is None or upcoming >= end:
                break
            moment = max(moment + step, upcoming)
            if moment >= end:
                break
            await self.move_clocks(moment)
            # A little past the stop: the claim reads the clock a moment later than this.
            due = await self.due_syncs(moment + dt.timedelta(seconds=RELEASE_SLACK_SECONDS))
            await self.add_news(due)
            since = self.now()
            await self.run_stop(meter, report)
            await self.lags(due, since)
            logged = await self.read_log()
            self.figures.requests_sandbox += logged.count
            self.figures.peak_in_flight = max(self.figures.peak_in_flight, logged.peak_in_flight)
            self.figures.stops += 1
            hours = int((moment - start).total_seconds() // 3600)
            if hours > said:
                said = hours
                self.say(
                    f"fleet: simulated hour {hours} of 24 after {time.perf_counter() - wall:.0f} s"
                )
        self.figures.wall_seconds = time.perf_counter() - wall
        # The day ends at its end, not at its last stop: what follows starts from there.
        await self.move_clocks(end)
        self.figures.requests_syncsvc = await self.own_requests(start, report)
        self.figures.cpu = meter.cpu
        self.figures.statements = meter.statements
        self.figures.commits = meter.commits
        self.figures.peak_rss_service_mib = peak_rss_mib()
        self.figures.peak_rss_decoders_mib = sum(
            peak_rss_mib(pid) for pid in self.ctx.decoder.worker_pids
        )
        return report


async def table_rows(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    """Rows of each compared table."""
    counts: dict[str, int] = {}
    async with sessionmaker() as session:
        for table in TABLES:
            counts[table] = int(await session.scalar(text(f"SELECT count(*) FROM {table}")) or 0)  # noqa: S608 - fixed names
    return counts


async def stored_bytes(
    sessionmaker: async_sessionmaker[AsyncSession], db_file: Path | None
) -> tuple[int, str]:
    """Bytes the database holds, and how that was read."""
    async with sessionmaker() as session:
        if session.get_bind().dialect.name == "postgresql":
            total = 0
            for table in TABLES:
                total += int(
                    await session.scalar(text(f"SELECT pg_total_relation_size('{table}')")) or 0
                )
            return total, "growth of pg_total_relation_size over the tables listed, after the day"
        await session.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
        await session.commit()
    size = await asyncio.to_thread(_file_size, db_file)
    return size, "growth of the SQLite file after a WAL checkpoint (pages reused inside it are not)"


@dataclass
class FleetWorld:
    """What the fleet runs against: the service's pieces, the sandbox and the database file."""

    ctx: SyncContext
    http: aiohttp.ClientSession
    origin: str
    config: Any
    database: str
    db_file: Path | None
    say: Callable[[str], None]
    #: Runs just before the day, and after the day (and the catch-up) on the fleet it left,
    #: before the clocks go back.
    before_day: Callable[[SimulatedDay], Awaitable[None]] | None = None
    after_day: Callable[[SimulatedDay], Awaitable[None]] | None = None


async def connect_fleet(
    world_: FleetWorld,
    ctx: SyncContext,
    options: FleetOptions,
    created: list[str],
    tenant_ids: list[str],
) -> tuple[dict[str, str], list[str]]:
    """Register the fleet's tenants, connect its patients and sync each once (no latency).

    Returns the sandbox tenant of each registered tenant id, and the connection ids.
    """
    sessionmaker = ctx.sessionmaker
    names: dict[str, str] = {}
    ids: list[str] = []
    for sandbox_tenant, count in split(options.size).items():
        if count == 0:
            continue
        urls = world.urls(world_.origin, world_.config, sandbox_tenant)
        tenant = await world.register(
            sessionmaker,
            ctx.vault,
            world_.http,
            urls.fhir_base,
            name=f"{sandbox_tenant}-{os.urandom(3).hex()}",
            resource_types=FLEET_TYPES,
        )
        tenant_ids.append(tenant.id)
        names[tenant.id] = sandbox_tenant
        started = time.perf_counter()
        connector = world.Connector(sessionmaker, ctx.vault, world_.http, tenant, urls.authorize)
        later = utcnow() + dt.timedelta(days=1)
        connected = await connector.connect_many(
            [patient(sandbox_tenant, i) for i in range(count)],
            user_prefix=f"fleet-{os.urandom(4).hex()}",
            next_refresh_at=later,
            next_sync_at=None,
        )
        created.extend(connected)
        ids.extend(connected)
        world_.say(
            f"fleet: {count:,} {sandbox_tenant} connected in {time.perf_counter() - started:.0f} s"
        )
    started = time.perf_counter()
    await world.make_due(sessionmaker, ids)
    first = await run_due(ctx, connection_ids=ids, limiter=unlimited(), max_batches=1_000_000)
    if first.failures or set(first.sync) != {"ok"} or sum(first.sync.values()) != len(ids):
        raise BenchError(
            f"the fleet's first sync did not succeed: {first.to_json()}; "
            f"{await failed_types(sessionmaker, ids)}"
        )
    world_.say(f"fleet: first sync of {len(ids):,} in {time.perf_counter() - started:.0f} s")
    return names, ids


async def measure(
    world_: FleetWorld, options: FleetOptions, created: list[str], tenant_ids: list[str]
) -> FleetFigures:
    """Connect the fleet, sync it once, then run the simulated day and return its figures."""
    ctx = dataclasses.replace(
        world_.ctx,
        settings=world_.ctx.settings.replace(
            sync_concurrency=options.concurrency,
            claim_batch_size=max(options.concurrency, 100),
            sync_interval_seconds=DAY_SECONDS // options.syncs_per_day,
        ),
    )
    sessionmaker = ctx.sessionmaker
    names, ids = await connect_fleet(world_, ctx, options, created, tenant_ids)
    for sandbox_tenant in names.values():
        await set_latency(
            world_.http, world_.origin, sandbox_tenant, options.latency_ms, token=True
        )
    await world.make_due(sessionmaker, ids, sync=False)
    figures = FleetFigures(
        options=options,
        database=world_.database,
        machine=machine(),
        started=utcnow().strftime("%Y-%m-%d %H:%M UTC"),
        load_before=os.getloadavg(),
    )
    figures.rows_before = await table_rows(sessionmaker)
    figures.bytes_before, figures.bytes_method = await stored_bytes(sessionmaker, world_.db_file)
    figures.database_cpu_method = (
        "PostgreSQL: CPU of this process's client backends on its database, read from "
        "/proc/<pid>/stat around each stop (server-wide WAL writer and checkpointer not "
        "counted; one pg_stat_activity query per stop is)"
        if world_.database == "postgresql"
        else "SQLite runs in the service process: its CPU is in 'other service threads' "
        "(aiosqlite's connection threads, read per thread from /proc/self/task)"
    )
    day = SimulatedDay(
        ctx=ctx,
        http=world_.http,
        origin=world_.origin,
        connection_ids=ids,
        tenant_names=names,
        options=options,
        figures=figures,
        say=world_.say,
    )
    try:
        if world_.before_day is not None:
            await world_.before_day(day)
        report = await day.run() if options.day else WorkReport()
        if options.catch_up:
            if not options.day:
                # The fleet in its steady state, as a day would leave it, before the outage.
                await day.schedule(day.now())
            figures.catch_up = await catch_up(day)
        if world_.after_day is not None:
            await world_.after_day(day)
        if options.in_flight:
            if not (options.day or options.catch_up):
                await day.schedule(day.now())
            for latency_ms in options.in_flight_latencies_ms:
                world_.say(f"fleet: the whole fleet due at once at {latency_ms} ms, limits lifted")
                figures.in_flight.append(await in_flight(day, latency_ms, options.concurrency))
    finally:
        # Both clocks back to the wall clock for whatever runs next.
        await day.advance(-day.offset)
        for sandbox_tenant in names.values():
            await set_latency(world_.http, world_.origin, sandbox_tenant, 0, token=True)
    figures.syncs = sum(report.sync.values())
    figures.sync_outcomes = report.sync
    figures.refreshes = report.refresh
    figures.rows_after = await table_rows(sessionmaker)
    figures.bytes_after, _ = await stored_bytes(sessionmaker, world_.db_file)
    figures.load_after = os.getloadavg()
    if report.failures:
        raise BenchError(f"{report.failures} connection(s) failed during the day")
    if set(report.sync) - {"ok"}:
        raise BenchError(
            f"syncs did not all succeed: {dict(report.sync)}; "
            f"{await failed_types(sessionmaker, ids)}"
        )
    await world.drop_connections(sessionmaker, ids)
    return figures


def _file_size(path: Path | None) -> int:
    return path.stat().st_size if path is not None and path.exists() else 0


def own_tcp_ports() -> set[int]:
    """Local TCP ports of this process's sockets (Linux ``/proc``; empty elsewhere)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path("/proc/self/fd").iterdir():
            with contextlib.suppress(OSError):
                target = str(fd.readlink())
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text(encoding="ascii").splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def failed_types(
    sessionmaker: async_sessionmaker[AsyncSession], connection_ids: Sequence[str]
) -> dict[str, str]:
    """One error message per failed resource type among the connections' runs."""
    found: dict[str, str] = {}
    async with sessionmaker() as session:
        rows: list[dict[str, Any]] = []
        for chunk in world.chunks(connection_ids):
            rows.extend(
                (
                    await session.scalars(
                        select(SyncRun.type_results).where(
                            SyncRun.connection_id.in_(chunk), SyncRun.outcome != "ok"
                        )
                    )
                ).all()
            )
        for results in rows:
            for name, result in (results or {}).items():
                if result.get("status") not in ("ok", None):
                    found[name] = str(result.get("error_message") or result.get("status"))
    return found
