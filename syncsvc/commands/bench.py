"""``syncsvc bench``: throughput and scale figures against the sandbox, peers alongside."""

from __future__ import annotations

import argparse
import asyncio
import sys

from syncsvc.commands.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    Commands,
    add_command,
    fail,
    failing_as,
    print_json,
)


def _sizes(value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part.replace("_", "")) for part in value.split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of whole numbers") from None
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError("sizes must be positive")
    return sizes


def _whole(value: str) -> int:
    try:
        return int(value.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError("a whole number") from None


def _positive(value: str) -> int:
    number = _whole(value)
    if number <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return number


def _not_negative(value: str) -> int:
    number = _whole(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return number


def _bench(args: argparse.Namespace) -> int:
    from syncsvc.bench.claim_scale import ClaimOptions
    from syncsvc.bench.fleet_compare import CompareOptions
    from syncsvc.bench.fleet_day import FleetOptions
    from syncsvc.bench.suite import OPT_IN_SCENARIOS, QUICK_SCENARIOS, SCENARIOS, Options, run
    from syncsvc.logging import configure_logging

    scenarios = tuple(args.scenario) if args.scenario else SCENARIOS
    if args.quick and not args.scenario:
        scenarios = QUICK_SCENARIOS
    unknown = set(scenarios) - set(SCENARIOS) - set(OPT_IN_SCENARIOS)
    if unknown:
        return fail("bench", f"unknown scenario(s): {', '.join(sorted(unknown))}", EXIT_USAGE)
    options = Options(
        db_url=args.db,
        patients=args.patients,
        resources=args.resources,
        rounds=args.rounds,
        wide_patients=args.wide_patients,
        big_resources=args.big_resources,
        scheduler_sizes=args.scheduler_size,
        search_sizes=args.search_size,
        refresh_connections=args.refresh_connections,
        workers=args.workers,
        decode_workers=args.decode_workers,
        write_lanes=args.write_lanes,
        scenarios=scenarios,
        fleet=FleetOptions(
            size=args.fleet_size,
            syncs_per_day=args.syncs_per_day,
            latency_ms=args.latency_ms,
            step_seconds=args.step_seconds,
            concurrency=args.fleet_concurrency,
        ),
        claim=ClaimOptions(sizes=args.claim_rows, churn=args.claim_churn),
        fleet_compare=CompareOptions(sample=args.fleet_peer_sample, workers=args.fleet_workers),
        say=(lambda line: print(line, file=sys.stderr, flush=True))
        if not args.json
        else (lambda _: None),
    )
    if args.quick:
        options.resources = min(options.resources, 500)
        options.rounds = min(options.rounds, 3)
        options.scheduler_sizes = tuple(min(size, 10_000) for size in options.scheduler_sizes)
        options.claim = ClaimOptions(
            sizes=tuple(sorted({min(size, 100_000) for size in args.claim_rows})),
            churn=min(args.claim_churn, 100_000),
        )
    configure_logging(log_format="console", log_level="WARNING")
    with failing_as("bench"):
        report = asyncio.run(run(options))
    if args.json:
        print_json(report.to_json())
    else:
        print(report.table())
    return EXIT_FAILED if any(t.met is False for t in report.targets) and args.strict else 0


def add_to(commands: Commands) -> None:
    """Register ``bench``."""
    bench = add_command(
        commands,
        "bench",
        summary="measure ingest, re-sync, scheduler, refresh and scale-out against the sandbox",
        examples=("syncsvc bench --quick", "syncsvc bench --db postgresql://USER@HOST/NAME"),
        description=(
            "Start the sandbox EHR in a child process, drive syncsvc's sync engine against it "
            "and print a table (median and min-max over rounds, peers in the same rounds)."
        ),
    )
    bench.add_argument("--db", metavar="URL", help="database (default: a temporary SQLite file)")
    bench.add_argument("--json", action="store_true", help="print the report as JSON")
    bench.add_argument("--quick", action="store_true", help="small sizes, a few rounds")
    bench.add_argument("--patients", type=int, default=8, help="patients of the ingest (8)")
    bench.add_argument("--resources", type=int, default=2_000, help="Observations each (2000)")
    bench.add_argument("--rounds", type=int, default=5, help="rounds per figure (5)")
    bench.add_argument("--wide-patients", type=int, default=32, help="patients at 50 ms (32)")
    bench.add_argument(
        "--big-resources", type=int, default=50_000, help="Observations of the big patient (50000)"
    )
    bench.add_argument(
        "--scheduler-size",
        type=_sizes,
        default=(100_000,),
        metavar="N[,N]",
        help="connections in the database for the claim timing (100000; add 1000000 to opt in)",
    )
    bench.add_argument(
        "--search-size",
        type=_sizes,
        default=(10_000, 100_000),
        metavar="N[,N]",
        help="listed tenants the provider search is timed over (10000,100000)",
    )
    bench.add_argument(
        "--refresh-connections", type=int, default=200, help="connections due for refresh (200)"
    )
    bench.add_argument(
        "--workers", type=_sizes, default=(1, 2, 3), metavar="N[,N]", help="scale-out (1,2,3)"
    )
    bench.add_argument(
        "--decode-workers",
        type=int,
        metavar="N",
        help="page-decoding processes of the measured service (default: as the service picks "
        "them, one per core beyond the first; 0 decodes in the event loop's thread)",
    )
    bench.add_argument(
        "--write-lanes",
        type=int,
        metavar="N",
        help="group-commit writers of the measured service on PostgreSQL (default: as the "
        "service picks them, 2; SQLite always has one)",
    )
    bench.add_argument(
        "--scenario",
        action="append",
        metavar="NAME",
        help="run only this scenario (repeatable): ingest, resync, peers, wide, big, "
        "attachments, scheduler, refresh, scaleout, search; and fleet (a simulated day), "
        "catchup (the fleet due at once after an outage, under the tenant limits), concurrency "
        "(the fleet due at once at 300 and 1,000 ms, limits lifted: connections in flight, RSS), "
        "claim "
        "(PostgreSQL: the claim among millions of connections) and everything (first syncs of "
        "every US Core type by per-type searches and by Patient/$everything), which run only "
        "when named",
    )
    fleet = bench.add_argument_group("fleet scenario (a simulated day of incremental syncs)")
    fleet.add_argument("--fleet-size", type=_positive, default=10_000, help="connections (10000)")
    fleet.add_argument(
        "--syncs-per-day", type=_positive, default=6, help="incremental syncs each (6)"
    )
    fleet.add_argument(
        "--latency-ms",
        type=_not_negative,
        default=300,
        help="added to every FHIR and token request (300)",
    )
    fleet.add_argument(
        "--step-seconds",
        type=_positive,
        default=60,
        help="simulated seconds the clocks move on at least between two stops (60)",
    )
    fleet.add_argument(
        "--fleet-concurrency",
        type=_positive,
        default=100,
        help="connections worked at once while measured, the sync_concurrency setting (100)",
    )
    fleet.add_argument(
        "--fleet-peer-sample",
        type=_not_negative,
        default=100,
        metavar="N",
        help="after the day: connections brought current once by syncsvc, a fhirclient loop "
        "and a fhirpy loop, side by side (100; 0: none)",
    )
    fleet.add_argument(
        "--fleet-workers",
        type=_sizes,
        default=(1, 2, 4),
        metavar="N[,N]",
        help="after the day, on PostgreSQL: worker processes working the whole fleet due (1,2,4)",
    )
    claim = bench.add_argument_group(
        "claim scenario (PostgreSQL: the lease claim among millions of connections, in a "
        "database of its own created beside --db and dropped after)"
    )
    claim.add_argument(
        "--claim-rows",
        type=_sizes,
        default=(1_000_000, 10_000_000),
        metavar="N[,N]",
        help="connections the claim is timed among, loaded one size after the other "
        "(1000000,10000000)",
    )
    claim.add_argument(
        "--claim-churn",
        type=_not_negative,
        default=1_000_000,
        metavar="N",
        help="connections claimed and written back at the largest size before the bloat is "
        "read (1000000; 0: none)",
    )
    bench.add_argument(
        "--strict", action="store_true", help="exit 1 when a target is missed on this machine"
    )
    bench.set_defaults(handler=_bench)
