"""Prometheus metrics of one application: request latencies, tenant health, and its work.

Each application owns a :class:`Metrics` on the ``CollectorRegistry`` of its services' work
counters (never the global one: a process, or a test run, may build many applications).
Request latencies are observed by :meth:`Metrics.middleware`; the work counters
(:class:`~syncsvc.work_metrics.WorkMetrics`) by the sync engine of the process's scheduler; the
database-derived gauges are computed when ``/metrics`` is scraped (from the same reports as the
health endpoints and the same readiness as ``/readyz``) and handed to collectors just before the
exposition is rendered, with no await in between, so a scrape never sees another's numbers.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence

from aiohttp import web
from prometheus_client import Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from syncsvc.health.report import TenantHealth
from syncsvc.health.rules import STATUSES
from syncsvc.work_metrics import Snapshot, WorkMetrics

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CONTENT_TYPE = CONTENT_TYPE_LATEST
#: Request latency buckets (seconds): pages and API calls are fast; a callback exchanges a code.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The route label of a request that matched no route (keeps scanners from inventing labels).
UNMATCHED = "unmatched"


def route_label(request: web.Request) -> str:
    """The route's pattern (``/tenants/{tenant}/health``), never the concrete path."""
    route = request.match_info.route
    resource = route.resource if route is not None else None
    if resource is None:
        return UNMATCHED
    return resource.canonical


class TenantCollector(Collector):
    """Gauges from the latest tenant health reports handed to :meth:`update`."""

    def __init__(self) -> None:
        self._reports: tuple[TenantHealth, ...] = ()

    def update(self, reports: Iterable[TenantHealth]) -> None:
        """Use ``reports`` for the next collection."""
        self._reports = tuple(reports)

    def collect(self) -> Iterator[Metric]:
        """The tenant gauges, one sample per tenant (and status, class, quantile)."""
        health = GaugeMetricFamily(
            "syncsvc_tenant_health",
            "1 for the tenant's current health status (ok, degraded, failing), else 0.",
            labels=["tenant", "status"],
        )
        connections = GaugeMetricFamily(
            "syncsvc_connections", "Connections by status.", labels=["tenant", "status"]
        )
        lag = GaugeMetricFamily(
            "syncsvc_sync_lag_seconds",
            "Now minus the last successful sync over active connections, by quantile.",
            labels=["tenant", "quantile"],
        )
        errors = GaugeMetricFamily(
            "syncsvc_errors_last_hour",
            "Errors in the last hour by class (insufficient_scope also by resource type).",
            labels=["tenant", "error_class", "resource_type"],
        )
        last_sync = GaugeMetricFamily(
            "syncsvc_last_successful_sync_age_seconds",
            "Seconds since any connection of the tenant last synced successfully.",
            labels=["tenant"],
        )
        discovery = GaugeMetricFamily(
            "syncsvc_discovery_age_seconds",
            "Seconds since the tenant's discovery document was last fetched.",
            labels=["tenant"],
        )
        type_failures = GaugeMetricFamily(
            "syncsvc_type_failures",
            "Active connections whose resource type is failing (kept failing past the threshold).",
            labels=["tenant", "resource_type"],
        )
        offline = GaugeMetricFamily(
            "syncsvc_connections_without_offline_access",
            "Connections (not revoked) holding no refresh token: they stop syncing when their "
            "access token expires.",
            labels=["tenant"],
        )
        type_states = GaugeMetricFamily(
            "syncsvc_resource_type_states",
            "Connections (not revoked) with a resource type in a state (withdrawn, not_granted, "
            "ok, ...).",
            labels=["tenant", "state", "resource_type"],
        )
        refresh_due = GaugeMetricFamily(
            "syncsvc_refresh_due_next_hour",
            "Active connections whose token refresh is due within the next hour.",
            labels=["tenant"],
        )
        launch_failures = CounterMetricFamily(
            "syncsvc_launch_failures",
            "Failed launches kept in the database, by reason (the EHR's URN code, else its "
            "error, else syncsvc's reason).",
            labels=["tenant", "reason"],
        )
        for report in self._reports:
            tenant = report.name
            for reason, count in report.launches.kept.by_reason.items():
                launch_failures.add_metric([tenant, reason], count)
            for status in STATUSES:
                health.add_metric([tenant, status], 1.0 if report.status == status else 0.0)
            for connection_status, count in report.connections.items():
                connections.add_metric([tenant, connection_status], count)
            for quantile, value in (
                ("0.5", report.lag_p50_seconds),
                ("0.95", report.lag_p95_seconds),
            ):
                if value is not None:
                    lag.add_metric([tenant, quantile], value)
            window = report.errors_hour
            for error_class, count in window.by_class.items():
                if error_class == "insufficient_scope" and window.insufficient_scope_by_type:
                    continue
                errors.add_metric([tenant, error_class, ""], count)
            for resource_type, count in window.insufficient_scope_by_type.items():
                errors.add_metric([tenant, "insufficient_scope", resource_type], count)
            if report.last_sync_success_age_seconds is not None:
                last_sync.add_metric([tenant], report.last_sync_success_age_seconds)
            if report.discovery_age_seconds is not None:
                discovery.add_metric([tenant], report.discovery_age_seconds)
            refresh_due.add_metric([tenant], report.refresh_due_next_hour)
            for resource_type, count in report.type_failures.items():
                type_failures.add_metric([tenant, resource_type], count)
            offline.add_metric([tenant], report.without_offline_access)
            for state, by_type in report.type_states.items():
                for resource_type, count in by_type.items():
                    type_states.add_metric([tenant, state, resource_type], count)
        yield from (
            health,
            connections,
            lag,
            errors,
            last_sync,
            discovery,
            refresh_due,
            type_failures,
            launch_failures,
            offline,
            type_states,
        )


class Metrics:
    """The registry of one application and its instruments.

    ``work`` is the process's work counters (its services'); the application's instruments join
    their registry, so one exposition shows both.
    """

    def __init__(self, work: WorkMetrics | None = None) -> None:
        #: The work counters of the sync engine running in this process (when one runs).
        self.work = work if work is not None else WorkMetrics()
        self.registry = self.work.registry
        self.request_seconds = Histogram(
            "syncsvc_http_request_duration_seconds",
            "Time to answer an HTTP request, by route pattern, method and status.",
            labelnames=("route", "method", "status"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tenants = TenantCollector()
        self.registry.register(self.tenants)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Observe every request's latency under its route pattern and final status."""
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            self.request_seconds.labels(route_label(request), request.method, str(status)).observe(
                time.perf_counter() - started
            )

    def exposition(
        self, reports: Sequence[TenantHealth], snapshot: Snapshot | None = None
    ) -> bytes:
        """The exposition: tenant gauges from ``reports``, readiness from ``snapshot``."""
        self.tenants.update(reports)
        self.work.scrape.snapshot = snapshot
        return generate_latest(self.registry)
