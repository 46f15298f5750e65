"""The figures a tenant health report is made of, and the pure functions that compute them.

Error and launch-failure windows, scope grants, the hourly outcome chart and sync lag
percentiles: each is plain data with its JSON form, computed from rows the database layer reads.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from syncsvc.db.health_repo import ConnectionFacts, ErrorCount
from syncsvc.db.launch_failure_repo import FailureCount
from syncsvc.smart.scopes import grant_report
from syncsvc.vocabulary import RUN_OUTCOMES

HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
#: The outcome chart shows this many one-hour buckets, the newest ending now.
CHART_BUCKETS = 24


def percentile(values: Sequence[float], pct: float) -> float | None:
    """The nearest-rank ``pct`` percentile of ``values`` (``None`` when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class ErrorWindow:
    """Errors in one window: per class, and insufficient_scope per resource type."""

    by_class: dict[str, int] = field(default_factory=dict)
    insufficient_scope_by_type: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Every error in the window."""
        return sum(self.by_class.values())

    @classmethod
    def of(cls, counts: Iterable[ErrorCount]) -> ErrorWindow:
        """The window summing ``counts``."""
        by_class: Counter[str] = Counter()
        by_type: Counter[str] = Counter()
        for item in counts:
            by_class[item.error_class] += item.count
            if item.error_class == "insufficient_scope":
                by_type[item.resource_type or "unknown"] += item.count
        return cls(dict(sorted(by_class.items())), dict(sorted(by_type.items())))

    def to_json(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "total": self.total,
            "by_class": self.by_class,
            "insufficient_scope_by_type": self.insufficient_scope_by_type,
        }


@dataclass(frozen=True)
class LaunchFailureWindow:
    """Failed launches in one window, by reason."""

    by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Every failed launch in the window."""
        return sum(self.by_reason.values())

    @classmethod
    def of(cls, counts: Iterable[FailureCount]) -> LaunchFailureWindow:
        """The window summing ``counts``."""
        by_reason: Counter[str] = Counter()
        for item in counts:
            by_reason[item.reason] += item.count
        return cls(dict(sorted(by_reason.items())))

    def to_json(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"total": self.total, "by_reason": self.by_reason}


@dataclass(frozen=True)
class LaunchFigures:
    """A tenant's failed launches (last hour, last day, every one kept) and its successes."""

    hour: LaunchFailureWindow = field(default_factory=LaunchFailureWindow)
    day: LaunchFailureWindow = field(default_factory=LaunchFailureWindow)
    #: Every failure kept, by reason: the ``syncsvc_launch_failures_total`` counter.
    kept: LaunchFailureWindow = field(default_factory=LaunchFailureWindow)
    succeeded_day: int = 0

    def to_json(self) -> dict[str, Any]:
        """The ``launch_failures`` field of tenant health."""
        return {
            "last_hour": self.hour.to_json(),
            "last_day": self.day.to_json(),
            "succeeded_last_day": self.succeeded_day,
        }


@dataclass(frozen=True)
class ScopeGrant:
    """One requested scope: how many connections asked for it and how many were granted it."""

    scope: str
    requested: int
    granted: int

    @property
    def trimmed(self) -> int:
        """Connections that asked for the scope and did not get it."""
        return self.requested - self.granted


@dataclass(frozen=True)
class OutcomeBucket:
    """Sync runs started in one hour, by outcome."""

    start: dt.datetime
    outcomes: dict[str, int]

    @property
    def total(self) -> int:
        """Runs in the bucket."""
        return sum(self.outcomes.values())


def lag_seconds(connection: ConnectionFacts, now: dt.datetime) -> float:
    """Seconds since a connection's last successful sync (or since it was made, if never)."""
    since = connection.last_success_at or connection.connected_at or connection.created_at
    return max(0.0, (now - since).total_seconds())


def scope_grants(connections: Iterable[ConnectionFacts]) -> tuple[ScopeGrant, ...]:
    """Per requested scope, how many connections requested it and how many were granted it.

    "Granted" follows the launch's own grant report: a v1 read scope answered with the v2
    equivalent counts, and ``offline_access`` counts when a refresh token was issued.
    """
    requested: Counter[str] = Counter()
    granted: Counter[str] = Counter()
    for connection in connections:
        report = grant_report(
            connection.requested_scopes,
            connection.granted_scopes,
            has_refresh_token=connection.has_refresh_token,
        )
        trimmed = set(report.trimmed)
        for scope in report.requested:
            requested[scope] += 1
            if scope not in trimmed:
                granted[scope] += 1
    return tuple(ScopeGrant(s, requested[s], granted[s]) for s in sorted(requested))


def outcome_buckets(
    runs: Iterable[tuple[dt.datetime, str]], now: dt.datetime, buckets: int = CHART_BUCKETS
) -> tuple[OutcomeBucket, ...]:
    """Runs per outcome in ``buckets`` one-hour buckets, the last one holding ``now``."""
    last_start = now.replace(minute=0, second=0, microsecond=0)
    first_start = last_start - (buckets - 1) * HOUR
    counts: list[dict[str, int]] = [dict.fromkeys(RUN_OUTCOMES, 0) for _ in range(buckets)]
    for started_at, outcome in runs:
        index = int((started_at - first_start) // HOUR)
        if 0 <= index < buckets and outcome in counts[index]:
            counts[index][outcome] += 1
    return tuple(OutcomeBucket(first_start + i * HOUR, counts[i]) for i in range(buckets))
