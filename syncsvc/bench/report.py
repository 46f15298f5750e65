"""The benchmark's report: rows of figures, rendered as a table or as JSON."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from syncsvc.bench.fleet_day import FleetFigures
from syncsvc.bench.measure import Sample, Spread


@dataclass
class Row:
    """One figure of one scenario: a median with min and max over rounds."""

    scenario: str
    name: str
    unit: str
    value: Spread
    cpu_per_10k: Spread | None = None
    peak_rss_growth_mib: Spread | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_samples(cls, scenario: str, name: str, samples: Sequence[Sample], *, unit: str) -> Row:
        """A throughput row from timed samples."""
        return cls(
            scenario,
            name,
            unit,
            Spread.of([s.rate for s in samples]),
            Spread.of([s.cpu_per_10k for s in samples]),
            Spread.of([s.peak_growth_mib for s in samples]),
        )

    def to_json(self) -> dict[str, Any]:
        """The row as JSON."""
        payload: dict[str, Any] = {
            "scenario": self.scenario,
            "name": self.name,
            "unit": self.unit,
            "value": self.value.to_json(),
        }
        if self.cpu_per_10k is not None:
            payload["cpu_seconds_per_10k"] = self.cpu_per_10k.to_json()
        if self.peak_rss_growth_mib is not None:
            payload["peak_rss_growth_mib"] = self.peak_rss_growth_mib.to_json()
        payload.update(self.extra)
        return payload


class Section(Protocol):
    """Figures of an opt-in scenario that are not rows: printed after the table, keyed in JSON."""

    def lines(self) -> list[str]:
        """The figures for a terminal."""

    def to_json(self) -> dict[str, Any]:
        """The figures as JSON."""


@dataclass
class Target:
    """One of the issue's targets and whether this run met it."""

    name: str
    met: bool | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        """The target as JSON."""
        return {"target": self.name, "met": self.met, "detail": self.detail}


@dataclass
class Report:
    """Everything one ``syncsvc bench`` run measured."""

    database: str
    patients: int
    resources: int
    rounds: int
    #: Page-decoding worker processes of the measured service (their CPU and RSS are counted).
    decode_workers: int = 0
    #: Group-commit writers of the measured service (see
    #: ``syncsvc.sync.pipeline.writer.write_lanes``).
    write_lanes: int = 1
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: The fleet scenario's simulated day, when it ran.
    fleet: FleetFigures | None = None
    #: Other opt-in scenarios' figures by their JSON key, in the order they ran.
    sections: dict[str, Section] = field(default_factory=dict)

    def row(self, scenario: str, name: str) -> Row | None:
        """The row of ``scenario`` named ``name``, if measured."""
        return next((r for r in self.rows if r.scenario == scenario and r.name == name), None)

    def machine(self) -> dict[str, Any]:
        """Where the figures come from."""
        return {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(terse=True),
        }

    def to_json(self) -> dict[str, Any]:
        """The report as JSON."""
        return (
            {
                "database": self.database,
                "machine": self.machine(),
                "sizes": {
                    "patients": self.patients,
                    "resources": self.resources,
                    "rounds": self.rounds,
                },
                "decode_workers": self.decode_workers,
                "write_lanes": self.write_lanes,
                "rows": [row.to_json() for row in self.rows],
                "targets": [target.to_json() for target in self.targets],
                "notes": self.notes,
            }
            | ({"fleet": self.fleet.to_json()} if self.fleet is not None else {})
            | {key: section.to_json() for key, section in self.sections.items()}
        )

    def table(self) -> str:
        """A plain-text table for a terminal."""
        machine = self.machine()
        lines = [
            f"syncsvc bench: {self.database}, {machine['cpus']} CPUs, Python {machine['python']}; "
            f"{self.patients} patients x {self.resources} resources, {self.rounds} rounds, "
            f"{self.decode_workers} decode worker(s), {self.write_lanes} write lane(s)",
            f"{'scenario':<10} {'figure':<26} {'median':>12} {'min - max':>21} "
            f"{'CPU s/10k':>9} {'RSS+ MiB':>8}  {'ratio (syncsvc/peer)':<20}",
        ]
        for row in self.rows:
            spread = f"{_num(row.value.low)} - {_num(row.value.high)}"
            cpu = f"{row.cpu_per_10k.median:.2f}" if row.cpu_per_10k else ""
            rss = f"{row.peak_rss_growth_mib.median:.0f}" if row.peak_rss_growth_mib else ""
            ratio = row.extra.get("syncsvc_ratio")
            shown = (
                f"{ratio['median']:.1f}x ({ratio['min']:.1f}-{ratio['max']:.1f})" if ratio else ""
            )
            lines.append(
                f"{row.scenario:<10} {row.name[:26]:<26} {_num(row.value.median):>12} "
                f"{spread:>21} {cpu:>9} {rss:>8}  {shown}"
            )
            if row.unit not in ("resources/s",):
                lines[-1] += f"  [{row.unit}]"
        if self.targets:
            lines.append("targets:")
            for target in self.targets:
                mark = {True: "met   ", False: "MISSED", None: "n/a   "}[target.met]
                lines.append(f"  {mark} {target.name}: {target.detail}")
        if self.fleet is not None:
            lines.extend(self.fleet.lines())
        for section in self.sections.values():
            lines.extend(section.lines())
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


def _num(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def _median(report: Report, scenario: str, name: str) -> float | None:
    row = report.row(scenario, name)
    return row.value.median if row is not None else None


def judge(report: Report) -> list[Target]:
    """The issue's targets, checked against this run's medians (where they were measured)."""
    targets: list[Target] = []
    first = _median(report, "ingest", "first sync")
    if first is not None:
        targets.append(
            Target(
                f"first sync >= 14,000/s ({report.database})",
                first >= 14_000,
                f"median {first:,.0f}/s",
            )
        )
        for peer in ("fhirclient", "fhirpy"):
            row = report.row("ingest", peer)
            if row is not None and "syncsvc_ratio" in row.extra:
                ratio = row.extra["syncsvc_ratio"]["median"]
                targets.append(Target(f">= 6x {peer}", ratio >= 6, f"median {ratio:.1f}x"))
    again = _median(report, "ingest", "re-sync unchanged")
    if again is not None and report.database == "sqlite":
        targets.append(Target("re-sync unchanged >= 19,000/s", again >= 19_000, f"{again:,.0f}/s"))
    kept = next((r for r in report.rows if r.scenario == "latency" and r.unit == "ratio"), None)
    if kept is not None:
        share = kept.value.median
        targets.append(Target("50 ms, 32 patients >= 90% of 0 ms", share >= 0.9, f"{share:.0%}"))
    claims = [r for r in report.rows if r.scenario == "scheduler" and r.name.startswith("claim")]
    million = next((r for r in claims if r.name.endswith("1,000,000")), None)
    if million is not None and report.database == "postgresql":
        ms = million.value.median
        targets.append(Target("claim 500 of 1,000,000 < 25 ms", ms < 25, f"{ms:.1f} ms"))
    small = report.row("scheduler", "worker RSS, 1,000 conns")
    large = report.row("scheduler", "worker RSS, 100,000 conns")
    if small is not None and large is not None:
        growth = large.value.median - small.value.median
        targets.append(
            Target("worker RSS at 100k within 20 MB of 1k", growth <= 20, f"{growth:+.1f} MiB")
        )
    searched = report.row("search", "100,000 tenants")
    if searched is not None:
        p95 = searched.extra["p95_ms"]
        targets.append(Target("provider search p95 < 50 ms at 100,000", p95 < 50, f"{p95:.1f} ms"))
    big = next((r for r in report.rows if r.scenario == "big"), None)
    if big is not None and big.peak_rss_growth_mib is not None:
        growth = big.peak_rss_growth_mib.median
        targets.append(
            Target("big patient peak RSS growth < 50 MB", growth < 50, f"{growth:.0f} MiB")
        )
    return targets
