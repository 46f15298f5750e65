"""The benchmark run: sets up the sandbox and a database, runs the scenarios, returns a report."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import random
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncsvc.bench import (
    claim_scale,
    documents,
    fleet_compare,
    fleet_day,
    fleet_ops,
    ingest,
    references,
    search,
    whole_record,
    world,
)
from syncsvc.bench.ingest import Fleet
from syncsvc.bench.measure import Sample, Spread, rss_mib
from syncsvc.bench.peers import PEERS, peer_available, run_peer
from syncsvc.bench.report import Report, Row, Target, judge
from syncsvc.bench.sandbox_process import sandbox_process
from syncsvc.db.engine import normalise_url
from syncsvc.db.migrate import upgrade_to_head
from syncsvc.process import tune_gc
from syncsvc.services import Services
from syncsvc.settings import VAULT_KEY_BYTES, Settings, VaultKey, default_sync_concurrency
from syncsvc.sync.context import SyncContext, utcnow
from syncsvc.sync.credentials import load_tokens

SCENARIOS = (
    "ingest", "resync", "peers", "record", "wide", "big", "attachments", "scheduler", "refresh",
    "scaleout", "search",
)  # fmt: skip
QUICK_SCENARIOS = (
    "ingest", "resync", "peers", "record", "wide", "attachments", "scheduler", "refresh", "search",
)  # fmt: skip
#: Run only when asked for by name: the whole suite's printout stays as it was.
OPT_IN_SCENARIOS = ("fleet", "catchup", "claim", "concurrency", "everything")


@dataclass
class Options:
    """What to run and how big."""

    db_url: str | None = None
    patients: int = 8
    resources: int = 2_000
    rounds: int = 5
    wide_patients: int = 32
    latency_ms: int = 50
    big_resources: int = 50_000
    scheduler_sizes: tuple[int, ...] = (100_000,)
    #: Listed tenants the provider search is timed over.
    search_sizes: tuple[int, ...] = (10_000, 100_000)
    refresh_connections: int = 200
    workers: tuple[int, ...] = (1, 2, 3)
    #: Page-decoding processes (None: the service's automatic choice).
    decode_workers: int | None = None
    #: Writers on PostgreSQL (None: the service's default).
    write_lanes: int | None = None
    scenarios: tuple[str, ...] = QUICK_SCENARIOS
    fleet: fleet_day.FleetOptions = field(default_factory=fleet_day.FleetOptions)
    claim: claim_scale.ClaimOptions = field(default_factory=claim_scale.ClaimOptions)
    #: After the fleet's day: the same incremental work by syncsvc and by the peers, worker
    #: processes on one PostgreSQL and the day's database writes (none unless asked for; the
    #: command asks for all three).
    fleet_compare: fleet_compare.CompareOptions = field(
        default_factory=lambda: fleet_compare.CompareOptions(sample=0, workers=(), writes=False)
    )
    work_dir: Path | None = None
    #: Raise the collector's thresholds after start-up, as ``worker`` should (see README).
    tune_gc: bool = True
    say: Callable[[str], None] = field(default=lambda _: None)


def bench_settings(db_url: str, data_dir: Path, **overrides: Any) -> Settings:
    """Settings of the measured service: generated keys, quiet logs."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": db_url,
        "vault_keys": (VaultKey("bench", secrets.token_bytes(VAULT_KEY_BYTES)),),
        "log_format": "console",
        "log_level": "WARNING",
    }
    values.update(overrides)
    return Settings(**values)


async def run(options: Options) -> Report:
    """Run the selected scenarios and return the report."""
    with contextlib.ExitStack() as stack:
        work = options.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        db_url = options.db_url or f"sqlite+aiosqlite:///{work / 'bench.db'}"
        patients = max(
            options.patients, options.wide_patients if "wide" in options.scenarios else 0
        )
        big = options.big_resources if "big" in options.scenarios else 0
        config = world.sandbox_config(
            patients=patients, resources=options.resources, big_resources=big
        )
        if "record" in options.scenarios:
            config.tenants.append(
                references.tenant([world.patient_id(i) for i in range(options.patients)])
            )
        if "attachments" in options.scenarios:
            config.tenants.append(documents.tenant_config())
        if {"fleet", "catchup", "concurrency"} & set(options.scenarios):
            config.tenants.extend(fleet_day.tenants(options.fleet.size))
            # The log is read and emptied at every stop of the day; one stop must fit in it.
            config.request_log_size = max(config.request_log_size, 20 * options.fleet.size)
        options.say(
            f"starting the sandbox ({patients} patients x {options.resources} Observations)"
        )
        origin = stack.enter_context(sandbox_process(config))
        await upgrade_to_head(db_url)
        settings = bench_settings(
            db_url,
            work,
            decode_workers=options.decode_workers,
            write_lanes=options.write_lanes,
            # The outbound pool is sized from this when the service is built: as large as the
            # fleet's concurrency, so the pool never caps what the scenario measures.
            sync_concurrency=max(options.fleet.concurrency, default_sync_concurrency()),
        )
        report = Report(
            database=normalise_url(db_url).get_backend_name(),
            patients=options.patients,
            resources=options.resources,
            rounds=options.rounds,
        )
        # The measured service is built as ``sync --once`` builds it: one Services.
        async with Services(settings, decode_in_workers=True) as services:
            decoder = services.decoder
            report.decode_workers = decoder.workers
            report.write_lanes = len(services.writers)
            if decoder.workers:
                held = sum(rss_mib(pid) for pid in decoder.worker_pids)
                report.notes.append(
                    f"{decoder.workers} page-decoding process(es): their CPU and RSS growth count "
                    f"in every figure; at rest they hold {held:.0f} MiB besides the service"
                )
            bench = Bench(
                options=options,
                services=services,
                origin=origin,
                config=config,
                work=work,
                report=report,
            )
            try:
                await bench.run()
            finally:
                await bench.clean_up()
        return report


def _clock_ahead(ahead: dt.timedelta) -> Callable[[], dt.datetime]:
    def clock() -> dt.datetime:
        return utcnow() + ahead

    return clock


class Bench:
    """One run's shared state: the database, the sandbox and what was created in them."""

    def __init__(
        self,
        *,
        options: Options,
        services: Services,
        origin: str,
        config: Any,
        work: Path,
        report: Report,
    ) -> None:
        self.options = options
        self.services = services
        self.settings = services.settings
        self.sessionmaker = services.sessionmaker
        self.http = services.http
        self.vault = services.vault
        self.origin = origin
        self.config = config
        self.work = work
        self.report = report
        self.created: list[str] = []
        self.tenant_ids: list[str] = []
        self.rng = random.Random(20261130)  # noqa: S311 - which resources change, not security
        self.say = options.say

    def context(self, **overrides: Any) -> SyncContext:
        """The service's sync context, with settings ``overrides`` (a page budget of its own)."""
        context = self.services.sync_context()
        settings = self.settings.replace(**overrides) if overrides else self.settings
        return dataclasses.replace(context, settings=settings)

    async def run(self) -> None:
        """Every selected scenario, in a fixed order."""
        tenant = await world.register(
            self.sessionmaker,
            self.vault,
            self.http,
            world.urls(self.origin, self.config, world.INGEST_TENANT).fhir_base,
            name=f"bench-{secrets.token_hex(3)}",
        )
        self.tenant_ids.append(tenant.id)
        self.connector = world.Connector(
            self.sessionmaker,
            self.vault,
            self.http,
            tenant,
            world.urls(self.origin, self.config, world.INGEST_TENANT).authorize,
        )
        chosen = self.options.scenarios
        if self.options.tune_gc:
            tune_gc()
        if {"fleet", "catchup", "concurrency"} & set(chosen):
            # First: the simulated day moves the clocks; nothing else may be due meanwhile.
            await self.fleet_day()
        if {"ingest", "resync", "peers"} & set(chosen):
            await self.ingest_rounds()
        if "record" in chosen:
            await self.record_with_references()
        if "wide" in chosen:
            await self.latency_rounds()
        if "big" in chosen:
            await self.big_patient()
        if "attachments" in chosen:
            self.report.rows += await documents.measure(
                self.context(),
                origin=self.origin,
                config=self.config,
                rounds=self.options.rounds,
                created=self.created,
                say=self.say,
            )
        if "refresh" in chosen:
            await self.refresh_rounds()
        if "scaleout" in chosen:
            await self.scale_out()
        if "scheduler" in chosen:
            await self.scheduler()
        if "search" in chosen:
            await self.provider_search()
        if "claim" in chosen:
            await self.claim_at_scale()
        if "everything" in chosen:
            await self.whole_record()
        self.report.targets.extend(judge(self.report))

    async def fleet_day(self) -> None:
        """The fleet through one simulated day (see :mod:`syncsvc.bench.fleet_day`)."""
        url = normalise_url(self.settings.database_url)
        db_file = (
            Path(url.database) if url.get_backend_name() == "sqlite" and url.database else None
        )
        place = fleet_day.FleetWorld(
            ctx=self.context(),
            http=self.http,
            origin=self.origin,
            config=self.config,
            database=self.report.database,
            db_file=db_file,
            say=self.say,
        )
        chosen = self.options.scenarios
        options = dataclasses.replace(
            self.options.fleet,
            day="fleet" in chosen,
            catch_up="catchup" in chosen,
            in_flight="concurrency" in chosen,
        )
        compare = None
        if options.day and self.options.fleet_compare.wanted:
            compare = fleet_compare.AfterDay(
                options=self.options.fleet_compare,
                config=self.config,
                settings=self.settings,
                work=self.work,
                latency_ms=options.latency_ms,
                say=self.say,
            )
            place.before_day = compare.before
            place.after_day = compare
        self.report.fleet = await fleet_day.measure(place, options, self.created, self.tenant_ids)
        if compare is not None:
            self.report.sections["fleet_comparison"] = compare.figures

    async def fleet(self, patients: list[str], label: str) -> Fleet:
        """Connect ``patients`` afresh (nothing stored yet); not due until a round says so."""
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        ids = await self.connector.connect_many(
            patients,
            user_prefix=f"{label}-{secrets.token_hex(4)}",
            next_refresh_at=later,
            next_sync_at=None,
        )
        self.created.extend(ids)
        return Fleet(ids, patients)

    async def grants(self, fleet: Fleet) -> list[tuple[str, str]]:
        """(patient, access token) of each connection, for the peers."""
        grants: list[tuple[str, str]] = []
        async with self.sessionmaker() as session:
            for connection_id, patient in zip(fleet.connection_ids, fleet.patients, strict=True):
                tokens = await load_tokens(session, self.vault, connection_id)
                if tokens is None or tokens.access_token is None:
                    raise ingest.BenchError("a connection has no access token")
                grants.append((patient, tokens.access_token))
        return grants

    async def ingest_rounds(self) -> None:
        """First sync, re-sync unchanged, re-sync 1% changed and the peers, round by round."""
        options = self.options
        patients = [world.patient_id(i) for i in range(options.patients)]
        await ingest.warm(self.http, self.origin, world.INGEST_TENANT, patients)
        base = world.urls(self.origin, self.config, world.INGEST_TENANT).fhir_base
        expect = options.patients * (options.resources + 1)
        samples: dict[str, list[Sample]] = {}
        ratios: dict[str, list[float]] = {}
        ctx = self.context(sync_concurrency=max(options.patients, 1))
        peers = [p for p in PEERS if "peers" in options.scenarios and peer_available(p)]
        missing = [p for p in PEERS if "peers" in options.scenarios and not peer_available(p)]
        if missing:
            self.report.notes.append(
                f"{' and '.join(missing)} not installed: no peer rows "
                "(`make bench` or `pip install -e '.[bench]'` installs them)"
            )
        for number in range(1, options.rounds + 1):
            fleet = await self.fleet(patients, f"ingest{number}")
            first = await ingest.sync_round(ctx, fleet, expect=expect)
            samples.setdefault("first sync", []).append(first)
            self.say(f"round {number}: first sync {first.rate:,.0f}/s")
            if "resync" in options.scenarios:
                again = await ingest.sync_round(ctx, fleet, expect=expect)
                samples.setdefault("re-sync unchanged", []).append(again)
                await ingest.change_some(
                    self.http,
                    self.origin,
                    world.INGEST_TENANT,
                    patients,
                    fraction=0.01,
                    rng=self.rng,
                )
                changed = await ingest.sync_round(ctx, fleet, expect=expect)
                samples.setdefault("re-sync 1% changed", []).append(changed)
                self.say(
                    f"round {number}: re-sync {again.rate:,.0f}/s, 1% changed {changed.rate:,.0f}/s"
                )
            grants = await self.grants(fleet) if peers else []
            for peer in peers:
                result = await asyncio.to_thread(
                    run_peer, peer, base, grants, self.work / f"{peer}.db", count=world.PAGE_SIZE
                )
                if "error" in result:
                    self.report.notes.append(f"{peer} failed: {result['error']}")
                    continue
                sample = Sample(**result)
                samples.setdefault(peer, []).append(sample)
                ratios.setdefault(peer, []).append(first.rate / sample.rate if sample.rate else 0.0)
                self.say(f"round {number}: {peer} {sample.rate:,.0f}/s")
            await world.drop_connections(self.sessionmaker, fleet.connection_ids)
        for name, taken in samples.items():
            row = Row.from_samples("ingest", name, taken, unit="resources/s")
            if name in ratios:
                row.extra["syncsvc_ratio"] = Spread.of(ratios[name]).to_json()
            self.report.rows.append(row)

    async def whole_record(self) -> None:
        """First syncs of every US Core type: one search per type against Patient/$everything.

        The same patients, fresh connections each time, at no added latency and at the ``wide``
        latency per request; the plan is switched by the tenant's ``"*"`` override.
        """
        place = whole_record.Place(
            origin=self.origin,
            config=self.config,
            http=self.http,
            sessionmaker=self.sessionmaker,
            vault=self.vault,
            context=self.context,
            say=self.say,
            created=self.created,
            tenant_ids=self.tenant_ids,
        )
        rows = await whole_record.measure(place, self.options.rounds, self.options.latency_ms)
        self.report.rows.extend(rows)

    async def record_with_references(self) -> None:
        """First syncs of whole records, their referenced resources included."""
        options = self.options
        patients = [world.patient_id(i) for i in range(options.patients)]
        place = references.Place(
            ctx=self.context(sync_concurrency=max(options.patients, 1)),
            sessionmaker=self.sessionmaker,
            vault=self.vault,
            http=self.http,
            origin=self.origin,
            config=self.config,
            created=self.created,
            tenant_ids=self.tenant_ids,
        )
        rows = await references.measure(place, patients, options.rounds)
        self.report.rows.extend(rows)
        extra = rows[0].extra
        self.report.notes.append(
            f"whole record with references: {extra['resources_per_patient']:,} resources per "
            f"patient, {extra['referenced_per_patient']} of them shared resources the record "
            "references (read by _id search after the types)"
        )
        self.say(f"whole record: first sync {rows[0].value.median:,.0f}/s")

    async def first_syncs(self, patients: list[str], latency_ms: int, label: str) -> Sample:
        """One first sync of ``patients`` at ``latency_ms`` per page (fresh connections)."""
        await ingest.set_latency(self.http, self.origin, world.INGEST_TENANT, latency_ms)
        try:
            fleet = await self.fleet(patients, label)
            ctx = self.context(sync_concurrency=len(patients))
            sample = await ingest.sync_round(
                ctx, fleet, expect=len(patients) * (self.options.resources + 1)
            )
        finally:
            await ingest.set_latency(self.http, self.origin, world.INGEST_TENANT, 0)
        await world.drop_connections(self.sessionmaker, fleet.connection_ids)
        return sample

    async def latency_rounds(self) -> None:
        """Added latency per page, hidden by working connections concurrently."""
        options = self.options
        few = [world.patient_id(i) for i in range(options.patients)]
        wide = [world.patient_id(i) for i in range(options.wide_patients)]
        await ingest.warm(self.http, self.origin, world.INGEST_TENANT, wide)
        shapes = [
            (f"{len(few)} patients, {options.latency_ms} ms", few, options.latency_ms),
            (f"{len(wide)} patients, 0 ms", wide, 0),
            (f"{len(wide)} patients, {options.latency_ms} ms", wide, options.latency_ms),
        ]
        samples: dict[str, list[Sample]] = {name: [] for name, _, _ in shapes}
        kept: list[float] = []
        for number in range(1, options.rounds + 1):
            for name, patients, latency in shapes:
                sample = await self.first_syncs(patients, latency, f"lat{number}")
                samples[name].append(sample)
                self.say(f"round {number}: {name}: {sample.rate:,.0f}/s")
            wide_0, wide_l = samples[shapes[1][0]][-1], samples[shapes[2][0]][-1]
            kept.append(wide_l.rate / wide_0.rate if wide_0.rate else 0.0)
        for name, taken in samples.items():
            self.report.rows.append(Row.from_samples("latency", name, taken, unit="resources/s"))
        self.report.rows.append(
            Row("latency", f"{len(wide)}p {options.latency_ms} ms / 0 ms", "ratio", Spread.of(kept))
        )

    async def big_patient(self) -> None:
        """One patient with many resources: memory must stay bounded while it syncs."""
        await ingest.warm(self.http, self.origin, world.INGEST_TENANT, [world.BIG_PATIENT])
        fleet = await self.fleet([world.BIG_PATIENT], "big")
        sample = await ingest.sync_round(
            self.context(), fleet, expect=self.options.big_resources + 1
        )
        self.say(f"big patient: {sample.rate:,.0f}/s, peak RSS +{sample.peak_growth_mib:.0f} MiB")
        self.report.rows.append(
            Row.from_samples(
                "big", f"1 patient x {self.options.big_resources}", [sample], unit="resources/s"
            )
        )
        await world.drop_connections(self.sessionmaker, fleet.connection_ids)

    async def refresh_rounds(self) -> None:
        """Refreshes per second with many connections due at once, steady and rotating."""
        base = self.context()
        for sandbox_tenant, label in (
            (world.STEADY_REFRESH_TENANT, "non-rotating"),
            (world.ROTATING_REFRESH_TENANT, "strict rotation"),
        ):
            urls = world.urls(self.origin, self.config, sandbox_tenant)
            tenant = await world.register(
                self.sessionmaker,
                self.vault,
                self.http,
                urls.fhir_base,
                name=f"{sandbox_tenant}-{secrets.token_hex(3)}",
            )
            self.tenant_ids.append(tenant.id)
            connector = world.Connector(
                self.sessionmaker, self.vault, self.http, tenant, urls.authorize
            )
            later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
            ids = await connector.connect_many(
                [world.REFRESH_PATIENT] * self.options.refresh_connections,
                user_prefix=f"refresh-{secrets.token_hex(4)}",
                next_refresh_at=later,
                next_sync_at=None,
            )
            self.created.extend(ids)
            rates: list[float] = []
            for number in range(1, self.options.rounds + 1):
                # syncsvc's clock runs ahead past each grant's keepalive (no sync is due, so only
                # keeping the grant alive asks for a refresh): each grant is due once per round
                # (the EHR's clock is not moved; tokens stay valid).
                ahead = number * dt.timedelta(days=base.settings.keepalive_days + 1)
                ctx = dataclasses.replace(base, clock=_clock_ahead(ahead))
                await world.make_due(self.sessionmaker, ids, sync=False, refresh=True)
                rates.append(await fleet_ops.refresh_round(ctx, ids))
            self.say(f"refresh {label}: {Spread.of(rates).median:,.0f}/s")
            self.report.rows.append(
                Row("refresh", f"{label} ({len(ids)} due)", "refreshes/s", Spread.of(rates))
            )

    async def scale_out(self) -> None:
        """1, 2, 3 worker processes ticking on one PostgreSQL database; no work done twice."""
        if self.report.database != "postgresql":
            self.report.notes.append("scale-out runs on PostgreSQL only (--db postgresql://...)")
            return
        options = self.options
        patients = [world.patient_id(i % options.patients) for i in range(4 * options.patients)]
        await ingest.warm(self.http, self.origin, world.INGEST_TENANT, patients[: options.patients])
        # Small claims, so the due connections spread over the workers instead of the first
        # worker's tick leasing them all.
        settings = self.settings.replace(
            tick_seconds=0.2, sync_concurrency=options.patients, claim_batch_size=options.patients
        )
        for count in options.workers:
            rates: list[float] = []
            proof: dict[str, Any] = {}
            with fleet_ops.scale_workers(settings, count):
                for number in range(1, max(options.rounds // 2, 1) + 1):
                    fleet = await self.fleet(patients, f"scale{count}-{number}")
                    since = dt.datetime.now(dt.UTC)
                    await world.make_due(self.sessionmaker, fleet.connection_ids)
                    seconds = await fleet_ops.wait_for_runs(
                        self.sessionmaker, fleet.connection_ids, since
                    )
                    rates.append(len(patients) * (options.resources + 1) / seconds)
                    proof = await fleet_ops.double_work(
                        self.sessionmaker, fleet.connection_ids, since, options.resources + 1
                    )
                    if proof["connections_run_twice"] or proof["connections_with_extra_writes"]:
                        raise ingest.BenchError(f"work was done twice: {proof}")
                    await world.drop_connections(self.sessionmaker, fleet.connection_ids)
            self.say(f"scale-out {count} worker(s): {Spread.of(rates).median:,.0f}/s {proof}")
            row = Row("scale-out", f"{count} worker process(es)", "resources/s", Spread.of(rates))
            row.extra["no_double_work"] = proof
            self.report.rows.append(row)

    async def scheduler(self) -> None:
        """Claiming 500 due among N connections, and a worker's RSS at 1,000 vs 100,000."""
        tenant = await world.register(
            self.sessionmaker,
            self.vault,
            self.http,
            world.urls(self.origin, self.config, world.STEADY_REFRESH_TENANT).fhir_base + "/sched",
            name=f"bench-sched-{secrets.token_hex(3)}",
            discover=False,
        )
        self.tenant_ids.append(tenant.id)
        filled = 0
        rss: dict[int, float] = {}
        due: list[str] = []
        for size in sorted({1_000, *self.options.scheduler_sizes}):
            started = time.perf_counter()
            ids = await world.bulk_connections(
                self.sessionmaker, tenant, size - filled, due=0, first=filled
            )
            self.created.extend(ids)
            due = due or ids[: fleet_ops.CLAIM_BATCH]
            filled = size
            await world.vacuum_analyze(self.sessionmaker)
            self.say(f"scheduler: {size:,} connections in {time.perf_counter() - started:.1f} s")
            if size in (1_000, 100_000):
                # Nothing due: the worker ticks over the table without working anyone.
                rss[size] = await fleet_ops.worker_rss(self.settings)
            if size >= 10_000 or size in self.options.scheduler_sizes:
                await world.set_due(self.sessionmaker, due, True)
                times, claimed = await fleet_ops.claim_times(
                    self.sessionmaker, max(self.options.rounds, 5)
                )
                await world.set_due(self.sessionmaker, due, False)
                row = Row("scheduler", f"claim {claimed} of {size:,}", "ms", Spread.of(times))
                self.report.rows.append(row)
        for size, value in rss.items():
            self.report.rows.append(
                Row("scheduler", f"worker RSS, {size:,} conns", "MiB", Spread.of([value]))
            )

    async def provider_search(self) -> None:
        """The patient's provider search over 10,000 and 100,000 listed tenants (p95)."""
        loaded: list[str] = []
        try:
            for size in sorted(set(self.options.search_sizes)):
                started = time.perf_counter()
                loaded += await search.load(self.sessionmaker, len(loaded), size - len(loaded))
                await world.vacuum_analyze(self.sessionmaker)
                self.say(f"search: {size:,} tenants in {time.perf_counter() - started:.1f} s")
                rounds = max(self.options.rounds, 5)
                timings = await search.query_times(self.sessionmaker, rounds)
                row = search.row_for(size, timings)
                missed = ", ".join(timings.misses) or "none"
                self.say(
                    f"search over {size:,}: p95 {row.extra['p95_ms']:.1f} ms; no match: {missed}"
                )
                self.report.rows.append(row)
                short = await search.query_times(self.sessionmaker, rounds, search.SHORT_QUERIES)
                row = search.row_for(size, short, label=", short")
                self.say(f"search over {size:,}, 1-2 letters: p95 {row.extra['p95_ms']:.1f} ms")
                self.report.rows.append(row)
        finally:
            if self.options.db_url is not None:  # a file of its own just goes
                await search.drop(self.sessionmaker, loaded)

    async def claim_at_scale(self) -> None:
        """The claim among millions of connections (see :mod:`syncsvc.bench.claim_scale`)."""
        if self.report.database != "postgresql":
            self.report.notes.append(
                "the claim at scale runs on PostgreSQL only (--db postgresql://...)"
            )
            return
        figures = await claim_scale.measure(
            self.settings.database_url, self.options.claim, self.say
        )
        self.report.sections["claim"] = figures
        verdict = figures.target()
        if verdict is not None:
            self.report.targets.append(Target("claim at 10,000,000 < 25 ms (p50)", *verdict))

    async def clean_up(self) -> None:
        """Remove what the run created from a database it was given (its own file just goes)."""
        if self.options.db_url is None:
            return
        await world.drop_tenants(self.sessionmaker, self.tenant_ids)
