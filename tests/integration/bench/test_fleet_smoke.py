"""``syncsvc bench --scenario fleet`` with a tiny fleet: the simulated day runs end to end and
every figure it prints is there and consistent. Never timed: the figures are for people."""

from __future__ import annotations

from pathlib import Path

from syncsvc.bench.fleet_day import CERNER, EPIC, FleetOptions, split
from syncsvc.bench.suite import SCENARIOS, Options, run
from syncsvc.cli import build_parser


async def test_a_tiny_fleet_goes_through_a_simulated_day(
    db_url: str, db_backend: str, tmp_path: Path
) -> None:
    fleet = FleetOptions(
        size=4, syncs_per_day=3, latency_ms=2, step_seconds=1_800, in_flight_latencies_ms=(2, 5)
    )
    options = Options(
        db_url=db_url,
        patients=1,
        resources=1,
        scenarios=("fleet", "catchup", "concurrency"),
        fleet=fleet,
        work_dir=tmp_path,
    )

    report = await run(options)

    figures = report.fleet
    assert figures is not None
    assert figures.database == ("sqlite" if db_backend == "sqlite" else "postgresql")
    # Every connection got its syncs, all of them clean, and the tokens were kept alive.
    assert figures.syncs == 4 * 3
    assert set(figures.sync_outcomes) == {"ok"}
    assert figures.refreshes["refreshed"] >= 4
    # Only syncs needed a token: no refresh of a 570 s token between them (it would be 48 a
    # connection over a day at these stops).
    assert figures.refreshes["refreshed"] <= figures.syncs
    # The sandbox's request log and syncsvc's own records count the same requests.
    assert figures.requests_sandbox > 0
    assert figures.requests_sandbox == figures.requests_syncsvc
    assert figures.cpu.total > 0
    assert figures.cpu_per_connection_day > 0
    assert figures.connections_per_core > 0
    assert figures.rows_written > 0
    assert figures.peak_in_flight >= 1
    assert figures.peak_rss_service_mib > 0
    assert len(figures.lags) == figures.syncs
    assert all(lag >= 0 for lag in figures.lags + figures.service_lags)
    # Each sync is at least a claim, a run record opened and closed, and a commit or two.
    assert figures.statements >= 4 * figures.syncs
    assert 0 < figures.commits < figures.statements
    payload = report.to_json()["fleet"]
    assert payload["requests_per_connection_day"] == round(figures.requests_sandbox / 4, 3)
    assert payload["statements_per_sync"] == round(figures.statements / figures.syncs, 2)
    table = report.table()
    for phrase in (
        "CPU s per connection-day",
        "requests per connection-day",
        "rows written per connection-day",
        "bytes written per connection-day",
        "peak requests in flight",
        "database round trips per connection-day",
        "sync lag against schedule",
        "connections per core",
        "load average",
    ):
        assert phrase in table
    # Only the fleet ran: no other scenario's row.
    assert report.rows == []
    # After the outage every connection synced once more, within each tenant's limits, and
    # the limiter's request count is the sandbox's.
    catch_up = figures.catch_up
    assert catch_up is not None
    assert catch_up.syncs == {"ok": 4}
    assert {t.name for t in catch_up.tenants} == {CERNER, EPIC}
    for tenant in catch_up.tenants:
        assert 1 <= tenant.peak_connections <= tenant.max_connections
    assert sum(t.requests for t in catch_up.tenants) == catch_up.requests_sandbox > 0
    assert "catch-up after a 6 h outage" in table
    # The in-flight passes: the fleet due at once at each latency, every sync ok, no more in
    # flight than the fleet, memory read.
    assert [p.latency_ms for p in figures.in_flight] == [2, 5]
    for figures_in_flight in figures.in_flight:
        assert figures_in_flight.syncs == {"ok": 4}
        assert figures_in_flight.failures == 0
        assert 1 <= figures_in_flight.peak_connections <= 4
        assert figures_in_flight.peak_requests >= 1
        assert figures_in_flight.peak_rss_mib > 0
        assert figures_in_flight.cpu_seconds > 0
    assert "in flight at 5 ms" in table
    assert len(payload["in_flight"]) == 2


def test_the_fleet_runs_only_when_named() -> None:
    assert "fleet" not in SCENARIOS
    assert "catchup" not in SCENARIOS
    assert split(5) == {CERNER: 3, EPIC: 2}
    args = build_parser().parse_args(
        ["bench", "--scenario", "fleet", "--fleet-size", "1_000", "--latency-ms", "1000"]
    )

    assert (args.scenario, args.fleet_size, args.latency_ms) == (["fleet"], 1_000, 1000)
    assert (args.syncs_per_day, args.step_seconds) == (6, 60)
