"""Reading a Prometheus exposition back, and what the shipped alert rules and dashboard name.

The work-metric tests scrape ``serve`` and ``worker`` over HTTP and compare the counters with
the database; the names the deploy files use must be among what those processes export.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db.models.activity import Event
from syncsvc.db.models.records import Resource, SyncRun

ROOT = Path(__file__).resolve().parents[3]
ALERT_RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "syncsvc.json"
OPERATOR_TOKEN = "test-admin-token"
_METRIC_NAME = re.compile(r"\bsyncsvc_[a-z0-9_]+\b")
#: Sample names each family type exports (a counter ``x`` is scraped as ``x_total``).
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gauge": ("",),
    "summary": ("", "_count", "_sum"),
}


@dataclass(frozen=True)
class Exposition:
    """One scrape: every sample, and every name a query could use (families without samples too)."""

    samples: list[tuple[str, dict[str, str], float]]
    names: frozenset[str]
    text: str

    def value(self, name: str, **labels: str) -> float | None:
        """The one sample of ``name`` with these labels (others ignored); None when absent."""
        found = [
            value
            for sample_name, sample_labels, value in self.samples
            if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
        ]
        assert len(found) <= 1, (name, labels, found)
        return found[0] if found else None

    def total(self, name: str, **labels: str) -> float:
        """The sum of every sample of ``name`` matching these labels."""
        return sum(
            value
            for sample_name, sample_labels, value in self.samples
            if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
        )

    def label_values(self, name: str, label: str) -> set[str]:
        """Every value ``label`` takes on samples of ``name``."""
        return {
            sample_labels[label]
            for sample_name, sample_labels, _ in self.samples
            if sample_name == name and label in sample_labels
        }


def parse(text: str) -> Exposition:
    """An exposition read back with Prometheus's own parser."""
    samples: list[tuple[str, dict[str, str], float]] = []
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        samples.extend((s.name, dict(s.labels), s.value) for s in family.samples)
    return Exposition(samples, frozenset(names), text)


async def scrape(
    http: aiohttp.ClientSession, url: str, token: str | None = OPERATOR_TOKEN
) -> Exposition:
    """``GET url`` with the operator token; the parsed exposition."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        return parse(await response.text())


def _expressions(node: Any) -> Iterable[str]:
    """Every ``expr`` / ``query`` string in a parsed YAML or JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                yield value
            else:
                yield from _expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from _expressions(item)


def deploy_metric_names() -> set[str]:
    """Every ``syncsvc_*`` metric the alert rules and the dashboard query."""
    documents = [yaml.safe_load(ALERT_RULES.read_text()), orjson.loads(DASHBOARD.read_bytes())]
    names = {
        name
        for document in documents
        for expression in _expressions(document)
        for name in _METRIC_NAME.findall(expression)
    }
    assert names, "the deploy files query no syncsvc metric"
    return names


@dataclass(frozen=True)
class Recorded:
    """What the database says the sync work did."""

    runs: dict[str, int]
    resources: int
    requests: int
    refreshes: dict[str, int]


async def recorded(sessionmaker: async_sessionmaker[AsyncSession]) -> Recorded:
    """Finished runs by outcome, stored resources, requests of the runs, refresh events."""
    async with sessionmaker() as session:
        runs = dict(
            (
                await session.execute(
                    select(SyncRun.outcome, func.count())
                    .where(SyncRun.finished_at.is_not(None))
                    .group_by(SyncRun.outcome)
                )
            ).all()
        )
        resources = await session.scalar(select(func.count()).select_from(Resource))
        requests = await session.scalar(select(func.coalesce(func.sum(SyncRun.requests), 0)))
        refreshes = dict(
            (
                await session.execute(
                    select(Event.outcome, func.sum(Event.count))
                    .where(Event.kind == "refresh")
                    .group_by(Event.outcome)
                )
            ).all()
        )
    return Recorded(
        runs={str(k): int(v) for k, v in runs.items()},
        resources=int(resources or 0),
        requests=int(requests or 0),
        refreshes={str(k): int(v) for k, v in refreshes.items()},
    )
