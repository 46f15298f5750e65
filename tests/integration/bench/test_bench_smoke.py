"""``syncsvc bench`` with tiny sizes: every scenario runs and the report keeps its shape.

Never timed: the figures are printed for people; this only checks the bench still works.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from syncsvc.bench.peers import PEERS, peer_available
from syncsvc.bench.suite import Options, run
from syncsvc.cli import build_parser

pytestmark = pytest.mark.slow


def _spread_shape(value: dict[str, object]) -> None:
    assert set(value) == {"median", "min", "max", "values"}
    assert isinstance(value["values"], list)
    assert value["values"]


async def test_the_bench_runs_every_scenario_at_tiny_sizes(
    db_url: str, db_backend: str, tmp_path: Path
) -> None:
    scenarios = (
        "ingest", "resync", "peers", "record", "wide", "big", "attachments", "refresh", "scheduler",
        "search",
    )  # fmt: skip
    if db_backend == "postgres":
        scenarios += ("scaleout",)
    options = Options(
        db_url=db_url,
        patients=2,
        resources=30,
        rounds=1,
        wide_patients=3,
        latency_ms=5,
        big_resources=120,
        scheduler_sizes=(1_500,),
        search_sizes=(50, 200),
        refresh_connections=3,
        workers=(1,),
        scenarios=scenarios,
        work_dir=tmp_path,
    )

    report = await run(options)

    payload = report.to_json()
    assert payload["database"] == ("sqlite" if db_backend == "sqlite" else "postgresql")
    assert payload["sizes"] == {"patients": 2, "resources": 30, "rounds": 1}
    names = {(row["scenario"], row["name"]) for row in payload["rows"]}
    assert {
        ("ingest", "first sync"),
        ("ingest", "re-sync unchanged"),
        ("ingest", "re-sync 1% changed"),
        ("record", "first sync, whole record"),
        ("latency", "3 patients, 5 ms"),
        ("big", "1 patient x 120"),
        ("documents", "first sync, attachments"),
        ("documents", "first sync, content"),
        ("refresh", "non-rotating (3 due)"),
        ("refresh", "strict rotation (3 due)"),
        ("scheduler", "claim 500 of 1,500"),
        ("scheduler", "worker RSS, 1,000 conns"),
        ("search", "50 tenants"),
        ("search", "200 tenants"),
        ("search", "200 tenants, short"),
    } <= names
    (record,) = [r for r in payload["rows"] if r["scenario"] == "record"]
    # Each whole record names shared resources, and the round stored them (it checks none waits).
    assert record["referenced_per_patient"] > 0
    assert record["resources_per_patient"] > record["referenced_per_patient"]
    (searched,) = [r for r in payload["rows"] if r["name"] == "200 tenants"]
    assert searched["p95_ms"] >= searched["value"]["min"]
    # The timed queries find providers (a search finding nothing is fast); only the one meant
    # to miss, and those this small directory has no match for, come back empty.
    assert "zzyzx" in searched["misses"]
    assert {"abbev", "lakeview gen", "20035", "pine bluff"}.isdisjoint(searched["misses"])
    # One or two letters find the names that start with them.
    (short,) = [r for r in payload["rows"] if r["name"] == "200 tenants, short"]
    assert short["misses"] == []
    for peer in PEERS:
        if peer_available(peer):
            (row,) = [r for r in payload["rows"] if r["name"] == peer]
            _spread_shape(row["syncsvc_ratio"])
        else:
            # A missing peer is said, with how to install it, never silently left out.
            assert any(peer in note and "make bench" in note for note in payload["notes"])
    if db_backend == "postgres":
        (scale,) = [r for r in payload["rows"] if r["scenario"] == "scale-out"]
        assert scale["no_double_work"]["connections_run_twice"] == 0
    for row in payload["rows"]:
        _spread_shape(row["value"])
    assert {target["target"] for target in payload["targets"]} >= {
        "50 ms, 32 patients >= 90% of 0 ms",
        "big patient peak RSS growth < 50 MB",
    }
    assert "first sync" in report.table()


def test_the_command_takes_the_documented_options() -> None:
    args = build_parser().parse_args(
        [
            "bench",
            "--db",
            "sqlite:///x.db",
            "--json",
            "--quick",
            "--scheduler-size",
            "100000,1000000",
        ]
    )

    assert (args.db, args.json, args.quick) == ("sqlite:///x.db", True, True)
    assert args.scheduler_size == (100_000, 1_000_000)
