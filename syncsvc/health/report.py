"""Tenant health reports: figures an operator reads, the facts the rules judge, and the verdict.

A report is computed at request (or scrape) time from the connections, events and sync runs in
the database; nothing is cached, so two processes always agree. Errors by class come from the
``events`` table (the runner records one per failed refresh, pull or type); the outcome chart
comes from ``sync_runs``.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import health_repo, launch_failure_repo, repo
from syncsvc.db.health_repo import (
    ConnectionFacts,
    ErrorCount,
    TypeFailures,
    TypeStateCount,
    UnsearchablePart,
)
from syncsvc.db.launch_failure_repo import FailureCount
from syncsvc.db.models.connections import Tenant
from syncsvc.directory.diagnosis import Evidence, Finding, diagnose, findings_json, granted_types
from syncsvc.vocabulary import CONNECTION_STATUSES, OFFLINE_ACCESS_NOT_GRANTED, TYPE_STATES

from .figures import (
    CHART_BUCKETS,
    DAY,
    HOUR,
    ErrorWindow,
    LaunchFailureWindow,
    LaunchFigures,
    OutcomeBucket,
    ScopeGrant,
    lag_seconds,
    outcome_buckets,
    percentile,
    scope_grants,
)
from .rules import TenantFacts, Verdict, evaluate, failing_at_tenant


@dataclass(frozen=True)
class TenantHealth:
    """Everything the health endpoints say about one tenant."""

    name: str
    display_name: str
    vendor: str
    now: dt.datetime
    verdict: Verdict
    connections: dict[str, int]
    last_refresh_at: dt.datetime | None
    last_sync_success_at: dt.datetime | None
    lag_p50_seconds: float | None
    lag_p95_seconds: float | None
    lag_connections: int
    errors_hour: ErrorWindow
    errors_day: ErrorWindow
    scopes: tuple[ScopeGrant, ...]
    discovery_fetched_at: dt.datetime | None
    discovery_error: str | None
    has_discovery_document: bool
    refresh_earliest: dt.datetime | None
    refresh_latest: dt.datetime | None
    refresh_due_next_hour: int
    outcomes: tuple[OutcomeBucket, ...] = ()
    #: Active connections with each resource type ``failing``.
    type_failures: dict[str, int] = field(default_factory=dict)
    launches: LaunchFigures = field(default_factory=LaunchFigures)
    #: The likely causes behind what the figures show (``tenants check`` prints the same).
    findings: tuple[Finding, ...] = ()
    #: Live connections holding no refresh token.
    without_offline_access: int = 0
    offline_access_advertised: bool = False
    #: Per type state, per resource type: live connections with that type in that state.
    type_states: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Per ``unsearchable`` type, per granted part its vendor cannot search: live connections.
    unsearchable_parts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """``ok``, ``degraded`` or ``failing``."""
        return self.verdict.status

    @property
    def discovery_age_seconds(self) -> float | None:
        """Seconds since the last good discovery document was fetched."""
        if self.discovery_fetched_at is None:
            return None
        return round((self.now - self.discovery_fetched_at).total_seconds(), 1)

    @property
    def last_sync_success_age_seconds(self) -> float | None:
        """Seconds since the newest successful sync of any connection."""
        if self.last_sync_success_at is None:
            return None
        return round((self.now - self.last_sync_success_at).total_seconds(), 1)

    def to_json(self) -> dict[str, Any]:
        """The JSON body of ``GET /tenants/{tenant}/health``."""
        body: dict[str, Any] = {
            "tenant": self.name,
            "display_name": self.display_name,
            "vendor": self.vendor,
            "generated_at": self.now,
            "status": self.verdict.status,
            "rule": {"id": self.verdict.rule, "reason": self.verdict.reason},
            "rules_fired": [
                {"id": f.rule, "status": f.status, "reason": f.reason}
                for f in self.verdict.findings
            ],
            "connections": {"total": sum(self.connections.values()), **self.connections},
            "last_success": {
                "refresh_at": self.last_refresh_at,
                "sync_at": self.last_sync_success_at,
            },
            "sync_lag_seconds": {
                "p50": self.lag_p50_seconds,
                "p95": self.lag_p95_seconds,
                "active_connections": self.lag_connections,
            },
            "errors": {
                "last_hour": self.errors_hour.to_json(),
                "last_day": self.errors_day.to_json(),
            },
            "launch_failures": self.launches.to_json(),
            "findings": findings_json(self.findings),
            "scopes": [
                {"scope": s.scope, "requested": s.requested, "granted": s.granted}
                for s in self.scopes
            ],
            "discovery": {
                "fetched_at": self.discovery_fetched_at,
                "age_seconds": self.discovery_age_seconds,
                "last_error": self.discovery_error,
                "has_document": self.has_discovery_document,
            },
            "grants": {
                "without_offline_access": self.without_offline_access,
                "offline_access_advertised": self.offline_access_advertised,
                "type_states": self.type_states,
                "unsearchable_parts": self.unsearchable_parts,
            },
            "refresh_horizon": {
                "earliest": self.refresh_earliest,
                "latest": self.refresh_latest,
                "due_next_hour": self.refresh_due_next_hour,
            },
            "type_failures": [
                {
                    "resource_type": resource_type,
                    "failing_connections": count,
                    "active_connections": self.connections.get("active", 0),
                    "at_tenant": failing_at_tenant(count, self.connections.get("active", 0)),
                }
                for resource_type, count in self.type_failures.items()
            ],
        }
        if self.outcomes:
            body["sync_outcomes"] = {
                "bucket_seconds": int(HOUR.total_seconds()),
                "buckets": [{"start": b.start, **b.outcomes} for b in self.outcomes],
            }
        return body


def build_health(
    tenant: Tenant,
    *,
    connections: Sequence[ConnectionFacts],
    errors_hour: Iterable[ErrorCount],
    errors_day: Iterable[ErrorCount],
    now: dt.datetime,
    runs: Iterable[tuple[dt.datetime, str]] | None = None,
    type_failures: Iterable[TypeFailures] = (),
    launches: LaunchFigures | None = None,
    granted_elsewhere: dict[str, list[str]] | None = None,
    type_states: Iterable[TypeStateCount] = (),
    unsearchable: Iterable[UnsearchablePart] = (),
) -> TenantHealth:
    """The report of one tenant from its rows."""
    failing_types = {item.resource_type: item.connections for item in type_failures}
    states: dict[str, dict[str, int]] = {state: {} for state in TYPE_STATES}
    for item in type_states:
        states.setdefault(item.state, {})[item.resource_type] = item.count
    unsearchable_parts: dict[str, dict[str, int]] = {}
    for part in unsearchable:
        unsearchable_parts.setdefault(part.resource_type, {})[part.part] = part.count
    without_offline = sum(
        1
        for c in connections
        if not c.has_refresh_token
        and (
            c.status == "active"
            or (c.status == "needs_reauth" and c.status_reason == OFFLINE_ACCESS_NOT_GRANTED)
        )
    )
    advertised = offline_access_advertised(tenant)
    by_status: dict[str, int] = dict.fromkeys(CONNECTION_STATUSES, 0)
    for connection in connections:
        by_status[connection.status] = by_status.get(connection.status, 0) + 1
    active = [c for c in connections if c.status == "active"]
    lags = [lag_seconds(c, now) for c in active]
    lag_p50, lag_p95 = percentile(lags, 50), percentile(lags, 95)
    successes = [c.last_success_at for c in connections if c.last_success_at is not None]
    refreshes = [c.last_refresh_at for c in connections if c.last_refresh_at is not None]
    horizon = sorted(c.next_refresh_at for c in active if c.next_refresh_at is not None)
    hour_window, day_window = ErrorWindow.of(errors_hour), ErrorWindow.of(errors_day)
    has_document = bool(tenant.endpoints)
    launches = launches or LaunchFigures()
    facts = TenantFacts(
        now=now,
        connections=by_status,
        last_sync_success_at=max(successes, default=None),
        oldest_active_since=min((c.connected_at or c.created_at for c in active), default=None),
        sync_lag_p95_seconds=lag_p95,
        errors_last_hour=hour_window.by_class,
        errors_last_day=day_window.by_class,
        discovery_error=tenant.discovery_error,
        has_discovery_document=has_document,
        type_failures=failing_types,
        reauth_offline_access=sum(
            1
            for c in connections
            if c.status == "needs_reauth" and c.status_reason == OFFLINE_ACCESS_NOT_GRANTED
        ),
        grants_offline_access=any(c.has_refresh_token for c in connections),
        launch_failures_last_day=launches.day.by_reason,
        launches_succeeded_last_day=launches.succeeded_day,
        without_offline_access=without_offline,
        offline_access_advertised=advertised,
        withdrawn_types=states.get("withdrawn", {}),
    )
    findings = diagnose(
        Evidence(
            display_name=tenant.display_name,
            discovered=has_document,
            scopes_supported=None
            if tenant.scopes_supported is None
            else tuple(tenant.scopes_supported),
            capabilities=tuple(tenant.capabilities or ()),
            connections=connections,
            granted_elsewhere=granted_elsewhere or {},
            launch_failures=launches.day.by_reason,
            mismatch_events=day_window.by_class.get("tenant_mismatch", 0)
            + day_window.by_class.get("patient_mismatch", 0),
        )
    )
    return TenantHealth(
        name=tenant.name,
        display_name=tenant.display_name,
        vendor=tenant.vendor,
        now=now,
        verdict=evaluate(facts),
        connections=by_status,
        last_refresh_at=max(refreshes, default=None),
        last_sync_success_at=facts.last_sync_success_at,
        lag_p50_seconds=None if lag_p50 is None else round(lag_p50, 1),
        lag_p95_seconds=None if lag_p95 is None else round(lag_p95, 1),
        lag_connections=len(active),
        errors_hour=hour_window,
        errors_day=day_window,
        scopes=scope_grants(c for c in connections if c.status != "revoked"),
        discovery_fetched_at=tenant.discovery_fetched_at,
        discovery_error=tenant.discovery_error,
        has_discovery_document=has_document,
        refresh_earliest=horizon[0] if horizon else None,
        refresh_latest=horizon[-1] if horizon else None,
        refresh_due_next_hour=sum(1 for moment in horizon if moment <= now + HOUR),
        outcomes=outcome_buckets(runs, now) if runs is not None else (),
        type_failures=failing_types,
        without_offline_access=without_offline,
        offline_access_advertised=advertised,
        type_states=states,
        unsearchable_parts=unsearchable_parts,
        launches=launches,
        findings=tuple(findings),
    )


def grants_by_client(
    tenants: Iterable[Tenant], connections: dict[str, list[ConnectionFacts]]
) -> dict[str, dict[str, list[str]]]:
    """Per client id, the types granted to it and at which tenants: client → type → names.

    A tenant's own name never appears under a type it never granted, so the map serves every
    tenant of the client as "granted elsewhere" for the types it lacks.
    """
    found: defaultdict[str, defaultdict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for tenant in tenants:
        _, granted = granted_types(connections.get(tenant.id, ()))
        for resource_type, n in granted.items():
            if n:
                found[tenant.client_id][resource_type].append(tenant.name)
    return {client: dict(types) for client, types in found.items()}


async def launch_figures(
    session: AsyncSession, now: dt.datetime, tenant_ids: Sequence[str] | None = None
) -> dict[str, LaunchFigures]:
    """Launch figures per tenant id, in four queries."""
    windows: dict[str, defaultdict[str, list[FailureCount]]] = {}
    for name, since in (("hour", now - HOUR), ("day", now - DAY), ("kept", None)):
        grouped: defaultdict[str, list[FailureCount]] = defaultdict(list)
        for item in await launch_failure_repo.failure_counts(session, since, tenant_ids):
            grouped[item.tenant_id].append(item)
        windows[name] = grouped
    succeeded = await launch_failure_repo.successful_launches(session, now - DAY, tenant_ids)
    ids = set(succeeded).union(*(set(w) for w in windows.values()))
    return {
        tenant_id: LaunchFigures(
            hour=LaunchFailureWindow.of(windows["hour"][tenant_id]),
            day=LaunchFailureWindow.of(windows["day"][tenant_id]),
            kept=LaunchFailureWindow.of(windows["kept"][tenant_id]),
            succeeded_day=succeeded.get(tenant_id, 0),
        )
        for tenant_id in ids
    }


def offline_access_advertised(tenant: Tenant) -> bool:
    """Whether the tenant's discovery says it grants offline access."""
    scopes = {scope.lower() for scope in tenant.scopes_supported or ()}
    return "offline_access" in scopes or "permission-offline" in (tenant.capabilities or ())


async def tenant_health(session: AsyncSession, tenant: Tenant, now: dt.datetime) -> TenantHealth:
    """The full report of one tenant, with its outcome chart."""
    ids = [tenant.id]
    connections = await health_repo.connection_facts(session, ids)
    errors_hour = await health_repo.error_counts(session, now - HOUR, ids)
    errors_day = await health_repo.error_counts(session, now - DAY, ids)
    first_bucket = now.replace(minute=0, second=0, microsecond=0) - (CHART_BUCKETS - 1) * HOUR
    runs = await health_repo.run_outcomes(session, tenant.id, first_bucket)
    failures = await health_repo.type_failures(session, ids)
    launches = await launch_figures(session, now, ids)
    siblings = [
        t
        for t in await repo.list_tenants(session)
        if t.client_id == tenant.client_id and t.id != tenant.id
    ]
    sibling_connections: defaultdict[str, list[ConnectionFacts]] = defaultdict(list)
    if siblings:
        for row in await health_repo.connection_facts(session, [t.id for t in siblings]):
            sibling_connections[row.tenant_id].append(row)
    return build_health(
        tenant,
        connections=connections,
        errors_hour=errors_hour,
        errors_day=errors_day,
        now=now,
        runs=runs,
        type_failures=failures,
        launches=launches.get(tenant.id),
        granted_elsewhere=grants_by_client(siblings, sibling_connections).get(tenant.client_id, {}),
        type_states=await health_repo.type_state_counts(session, ids),
        unsearchable=await health_repo.unsearchable_part_counts(session, ids),
    )


async def all_tenant_health(session: AsyncSession, now: dt.datetime) -> list[TenantHealth]:
    """The report of every tenant, by name (no outcome charts), in ten queries."""
    tenants = await repo.list_tenants(session)
    connections: defaultdict[str, list[ConnectionFacts]] = defaultdict(list)
    for row in await health_repo.connection_facts(session):
        connections[row.tenant_id].append(row)
    errors_hour: defaultdict[str, list[ErrorCount]] = defaultdict(list)
    for item in await health_repo.error_counts(session, now - HOUR):
        errors_hour[item.tenant_id].append(item)
    errors_day: defaultdict[str, list[ErrorCount]] = defaultdict(list)
    for item in await health_repo.error_counts(session, now - DAY):
        errors_day[item.tenant_id].append(item)
    failures: defaultdict[str, list[TypeFailures]] = defaultdict(list)
    for failure in await health_repo.type_failures(session):
        failures[failure.tenant_id].append(failure)
    launches = await launch_figures(session, now)
    by_client = grants_by_client(tenants, connections)
    type_states: defaultdict[str, list[TypeStateCount]] = defaultdict(list)
    for count in await health_repo.type_state_counts(session):
        type_states[count.tenant_id].append(count)
    unsearchable: defaultdict[str, list[UnsearchablePart]] = defaultdict(list)
    for part in await health_repo.unsearchable_part_counts(session):
        unsearchable[part.tenant_id].append(part)
    reports = [
        build_health(
            t,
            connections=connections[t.id],
            errors_hour=errors_hour[t.id],
            errors_day=errors_day[t.id],
            now=now,
            type_failures=failures[t.id],
            launches=launches.get(t.id),
            granted_elsewhere=by_client.get(t.client_id, {}),
            type_states=type_states[t.id],
            unsearchable=unsearchable[t.id],
        )
        for t in tenants
    ]
    return sorted(reports, key=lambda r: r.name)
