"""After a tiny fleet's day, in the same run: syncsvc's pass beside the peers' loops, worker
processes on one PostgreSQL running each due sync once, and the day's database writes.
Never timed: the figures are for people."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncsvc.bench.fleet_compare import CompareOptions
from syncsvc.bench.fleet_day import FleetOptions
from syncsvc.bench.peers import PEERS, peer_available
from syncsvc.bench.suite import Options, run
from syncsvc.cli import build_parser

pytestmark = pytest.mark.slow


async def test_a_tiny_fleet_is_compared_and_worked_by_processes(
    db_url: str, db_backend: str, tmp_path: Path
) -> None:
    options = Options(
        db_url=db_url,
        patients=1,
        resources=1,
        scenarios=("fleet",),
        fleet=FleetOptions(size=4, syncs_per_day=2, latency_ms=2, step_seconds=3_600),
        fleet_compare=CompareOptions(sample=3, workers=(1, 2), writes=True),
        work_dir=tmp_path,
    )

    report = await run(options)

    payload = report.to_json()["fleet_comparison"]
    passes = {p["who"]: p for p in payload["passes"]}
    # syncsvc brought the sample current: every FHIR request of a sync, none failed.
    ours = passes["syncsvc"]
    assert ours["error"] is None
    assert ours["connections"] == 3
    assert ours["requests"] >= 3 * 4
    assert ours["cpu_seconds"] > 0
    for peer in PEERS:
        if peer_available(peer):
            # A refresh, the Patient and one search per other type, for each connection;
            # the sandbox's log and the loop's own count agree.
            assert passes[peer]["error"] is None
            assert passes[peer]["requests"] >= 3 * 5
            assert (
                f"its own count of requests {passes[peer]['requests']}" in (passes[peer]["detail"])
            )
        else:
            assert any(peer in note for note in payload["notes"])
    table = report.table()
    assert "the same incremental work" in table
    if db_backend == "sqlite":
        assert payload["workers"] == []
        assert payload["writes"] is None
        return
    # Each worker count worked every connection exactly once, from the run records.
    assert [w["workers"] for w in payload["workers"]] == [1, 2]
    for workers in payload["workers"]:
        assert workers["runs"] == workers["connections"] == 4
        assert workers["connections_run_twice"] == workers["connections_not_run"] == 0
        assert sum(workers["runs_per_worker"]) == 4
        assert workers["requests"] >= 4 * 4
    writes = payload["writes"]["during_the_day"]
    assert writes["wal_position"] > 0
    assert writes["tup_inserted"] > 0
    assert writes["tup_updated"] > 0
    assert "PostgreSQL during the day" in table


def test_the_comparison_is_asked_for_by_default_and_can_be_left_out() -> None:
    parser = build_parser()
    args = parser.parse_args(["bench", "--scenario", "fleet"])
    assert (args.fleet_peer_sample, args.fleet_workers) == (100, (1, 2, 4))
    args = parser.parse_args(["bench", "--fleet-peer-sample", "0", "--fleet-workers", "2,8"])
    assert (args.fleet_peer_sample, args.fleet_workers) == (0, (2, 8))
