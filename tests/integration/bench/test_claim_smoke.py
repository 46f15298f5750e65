"""``syncsvc bench --scenario claim`` at small sizes: the table is generated in a database of its
own, the production claim takes due batches, the churn writes them back and the bloat is read.
Never timed: the figures are for people."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from syncsvc.bench.claim_scale import ClaimOptions
from syncsvc.bench.suite import OPT_IN_SCENARIOS, SCENARIOS, Options, run
from syncsvc.cli import build_parser
from syncsvc.db.engine import normalise_url


async def _databases(db_url: str) -> set[str]:
    engine = create_async_engine(normalise_url(db_url))
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text("SELECT datname FROM pg_database WHERE datname LIKE 'syncsvc_claim_%'")
            )
            return {str(row[0]) for row in rows.all()}
    finally:
        await engine.dispose()


async def test_the_claim_at_scale_runs_small(db_url: str, db_backend: str, tmp_path: Path) -> None:
    claim = ClaimOptions(sizes=(1_500, 3_000), rounds=4, churn=1_200, batch=100)
    options = Options(
        db_url=db_url, patients=1, resources=1, scenarios=("claim",), claim=claim, work_dir=tmp_path
    )
    before = await _databases(db_url) if db_backend == "postgres" else set()

    report = await run(options)

    if db_backend == "sqlite":
        assert "claim" not in report.sections
        assert any("PostgreSQL only" in note for note in report.notes)
        return
    figures = report.to_json()["claim"]
    assert [size["rows"] for size in figures["sizes"]] == [1_500, 3_000]
    for size in figures["sizes"]:
        # About two batches are due at the claim's clock; each claim takes one whole batch.
        assert size["claims"]["claimed_per_round"] == 100
        assert size["claims"]["rounds"] == 4
        assert set(size["sizes"]["indexes"]) >= {
            "pk_connections",
            "ix_connections_due",
        }
    churn = figures["churn"]
    assert churn["updates"] >= 1_200
    # Each written-back connection was claimed (a lease, heap-only) and moved on (not).
    assert churn["updates_counted"] == 2 * churn["updates"]
    assert 0 < churn["hot_updates"] < churn["updates_counted"]
    assert churn["writeback_wal_bytes"] > 0
    assert figures["claims_after_churn"]["claimed_per_round"] == 100
    assert figures["claims_after_vacuum"]["claimed_per_round"] == 100
    assert figures["after_vacuum"]["dead_percent"] == 0.0
    # The database of its own is gone again; no target is judged below ten million.
    assert await _databases(db_url) == before
    assert not any(t.name.startswith("claim at 10,000,000") for t in report.targets)
    assert "claim at scale" in report.table()


def test_the_claim_runs_only_when_named() -> None:
    assert "claim" not in SCENARIOS
    assert "claim" in OPT_IN_SCENARIOS
    args = build_parser().parse_args(
        ["bench", "--scenario", "claim", "--claim-rows", "10_000_000", "--claim-churn", "0"]
    )
    assert (args.claim_rows, args.claim_churn) == ((10_000_000,), 0)
