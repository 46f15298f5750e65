"""Prometheus counters of the work a process does: EHR requests, runs, resources, refreshes, ticks.

Every process that syncs has one :class:`WorkMetrics` in its registry: ``serve`` in the
application's (``/metrics``), ``worker`` in its own (``--metrics-port``). A sync context built
without one gets a private registry nobody scrapes (``sync --once``, the demo, the bench).

Counting happens where the work is recorded, once per request, page, run or tick and never per
resource, through a :class:`TenantMeter` whose labelled children are looked up once per tenant:
a page costs a handful of increments. Labels stay bounded (tenant names and fixed vocabularies;
never a connection or patient id). Pages decoded in page-decoding processes are counted by the
pull that sent them, in the parent. Queue depths, write latency, readiness and the due backlog
are read when a scrape asks (:class:`ScrapeState`), not pushed from the hot path.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

#: EHR request latency buckets (seconds): a page takes tens of milliseconds to seconds.
REQUEST_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Claim latency buckets (seconds): a claim among a million connections takes milliseconds.
CLAIM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Group-commit latency buckets (seconds): one transaction of up to 64 pages' rows.
WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: The ``status`` of an EHR request that got no HTTP answer.
TIMEOUT = "timeout"
NETWORK = "network"


class LatencyStats:
    """A fixed-bucket latency histogram kept by a hot-path object itself (read at scrape time).

    Plain integers and a float, updated without a lock: the event loop's thread is the only
    writer, and a scrape on the same thread never sees half an update.
    """

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(buckets)
        #: Observations per bucket (not cumulative), the last one above every bound.
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        """Count one observation."""
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def add_to(self, counts: list[int]) -> float:
        """Add this histogram's bucket counts into ``counts``; returns its sum."""
        for index, count in enumerate(self.counts):
            counts[index] += count
        return self.total


@dataclass(frozen=True)
class Pipeline:
    """What the page pipeline shows at scrape time (see ``syncsvc.sync.context``)."""

    #: Pages handed to page-decoding processes and not yet back.
    decoding: Callable[[], int]
    #: Units of work waiting for, or in, a group writer's transaction.
    writing: Callable[[], int]
    #: The group writers' commit latencies.
    writes: Callable[[], Sequence[LatencyStats]]


@dataclass(frozen=True)
class Snapshot:
    """Facts read from the database and the scheduler when a scrape asks."""

    ready: bool
    due_connections: int | None = None
    oldest_due_seconds: float | None = None


class ScrapeState(Collector):
    """The gauges computed at scrape time: readiness, due backlog, pipeline depths, writes."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None
        self.pipeline: Pipeline | None = None

    def collect(self) -> Iterator[Metric]:
        """The scrape-time families (always present; samples only where known)."""
        ready = GaugeMetricFamily(
            "syncsvc_ready",
            "1 when this process is ready (as /readyz says: database, migrations, tick), else 0.",
        )
        due = GaugeMetricFamily(
            "syncsvc_scheduler_due_connections",
            "Active connections due for a refresh or pull now, not leased and not backing off.",
        )
        oldest = GaugeMetricFamily(
            "syncsvc_scheduler_oldest_due_seconds",
            "How long the longest-waiting due connection has been due (0 when none is).",
        )
        snapshot = self.snapshot
        if snapshot is not None:
            ready.add_metric([], 1.0 if snapshot.ready else 0.0)
            if snapshot.due_connections is not None:
                due.add_metric([], snapshot.due_connections)
            if snapshot.oldest_due_seconds is not None:
                oldest.add_metric([], snapshot.oldest_due_seconds)
        decoding = GaugeMetricFamily(
            "syncsvc_pipeline_decode_queue_pages",
            "Pages handed to page-decoding processes and not yet back.",
        )
        writing = GaugeMetricFamily(
            "syncsvc_pipeline_write_queue_units",
            "Units of work (pages, run records) waiting for or in a group writer's transaction.",
        )
        writes = HistogramMetricFamily(
            "syncsvc_pipeline_write_duration_seconds",
            "Time to write and commit one group transaction of the page pipeline.",
        )
        pipeline = self.pipeline
        if pipeline is not None:
            decoding.add_metric([], pipeline.decoding())
            writing.add_metric([], pipeline.writing())
            counts = [0] * (len(WRITE_BUCKETS) + 1)
            total = sum(stats.add_to(counts) for stats in pipeline.writes())
            cumulative, buckets = 0, []
            for bound, count in zip((*WRITE_BUCKETS, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append((_le(bound), cumulative))
            writes.add_metric([], buckets, total)
        yield from (ready, due, oldest, decoding, writing, writes)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class TenantMeter:
    """One tenant's labelled counters, looked up once (a pull counts through this per page)."""

    __slots__ = (
        "_changed",
        "_deleted",
        "_metrics",
        "_new",
        "_rejected",
        "_requests",
        "_seconds",
        "_unchanged",
        "tenant",
    )

    def __init__(self, metrics: WorkMetrics, tenant: str) -> None:
        self.tenant = tenant
        self._metrics = metrics
        self._requests: dict[tuple[str, str], Counter] = {}
        self._seconds = metrics.ehr_request_seconds.labels(tenant)
        stored = metrics.resources_stored
        self._new = stored.labels(tenant, "new")
        self._changed = stored.labels(tenant, "changed")
        self._deleted = stored.labels(tenant, "deleted")
        self._unchanged = metrics.resources_unchanged.labels(tenant)
        self._rejected = metrics.resources_rejected.labels(tenant)

    def request(self, resource_type: str, status: str, seconds: float) -> None:
        """One request to the tenant's FHIR server: its type, HTTP status (or failure), time."""
        key = (resource_type, status)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self._metrics.ehr_requests.labels(
                self.tenant, resource_type, status
            )
        counter.inc()
        self._seconds.observe(seconds)

    def retry(self, reason: str) -> None:
        """One request sent again within its run, and why."""
        self._metrics.ehr_retries.labels(self.tenant, reason).inc()

    def resources(
        self, *, new: int, changed: int, deleted: int, unchanged: int, rejected: int
    ) -> None:
        """What one committed page (or a type's reconciliation) did to stored resources."""
        if new:
            self._new.inc(new)
        if changed:
            self._changed.inc(changed)
        if deleted:
            self._deleted.inc(deleted)
        if unchanged:
            self._unchanged.inc(unchanged)
        if rejected:
            self._rejected.inc(rejected)

    def run(self, outcome: str) -> None:
        """One finished sync run (its record is committed) with this outcome."""
        self._metrics.sync_runs.labels(self.tenant, outcome).inc()

    def refresh(self, outcome: str) -> None:
        """One token refresh recorded with this outcome (as its event says)."""
        self._metrics.token_refreshes.labels(self.tenant, outcome).inc()


class WorkMetrics:
    """The work counters of one process, in ``registry`` (a private one when None)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ehr_requests = Counter(
            "syncsvc_ehr_requests",
            "Requests to EHR FHIR servers by tenant, resource type and HTTP status "
            "(timeout or network when no answer came).",
            ("tenant", "resource_type", "status"),
            registry=r,
        )
        self.ehr_request_seconds = Histogram(
            "syncsvc_ehr_request_duration_seconds",
            "Time from sending a FHIR request to having its whole body, by tenant.",
            ("tenant",),
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.ehr_retries = Counter(
            "syncsvc_ehr_retries",
            "FHIR requests sent again within their run, by tenant and reason.",
            ("tenant", "reason"),
            registry=r,
        )
        self.sync_runs = Counter(
            "syncsvc_sync_runs",
            "Finished sync runs by tenant and outcome (one per run record).",
            ("tenant", "outcome"),
            registry=r,
        )
        self.resources_stored = Counter(
            "syncsvc_resources_stored",
            "Resources written by tenant and change (new, changed, deleted).",
            ("tenant", "change"),
            registry=r,
        )
        self.resources_unchanged = Counter(
            "syncsvc_resources_unchanged",
            "Resources pulled again and found unchanged (compared, not rewritten), by tenant.",
            ("tenant",),
            registry=r,
        )
        self.resources_rejected = Counter(
            "syncsvc_resources_rejected",
            "Resources refused by the compartment guard (not the patient's), by tenant.",
            ("tenant",),
            registry=r,
        )
        self.token_refreshes = Counter(
            "syncsvc_token_refreshes",
            "Token refreshes by tenant and outcome (ok, needs_reauth, transient), as recorded.",
            ("tenant", "outcome"),
            registry=r,
        )
        self.ticks = Counter(
            "syncsvc_scheduler_ticks",
            "Scheduler ticks by outcome (ok, failed).",
            ("outcome",),
            registry=r,
        )
        self.last_tick = Gauge(
            "syncsvc_scheduler_last_tick_timestamp_seconds",
            "When this process's scheduler last started a tick (Unix time).",
            registry=r,
        )
        self.claimed = Counter(
            "syncsvc_scheduler_claimed_connections",
            "Due connections this process leased to work.",
            registry=r,
        )
        self.claim_seconds = Histogram(
            "syncsvc_scheduler_claim_duration_seconds",
            "Time of one claim of due connections (one short transaction).",
            buckets=CLAIM_BUCKETS,
            registry=r,
        )
        self.scrape = ScrapeState()
        r.register(self.scrape)
        self._tenants: dict[str, TenantMeter] = {}

    def tenant(self, name: str) -> TenantMeter:
        """The meter of tenant ``name`` (made on first use, then kept)."""
        meter = self._tenants.get(name)
        if meter is None:
            meter = self._tenants[name] = TenantMeter(self, name)
        return meter

    def tick(self, *, ok: bool) -> None:
        """One scheduler tick ended."""
        self.ticks.labels("ok" if ok else "failed").inc()

    def tick_started(self) -> None:
        """A scheduler tick starts now."""
        self.last_tick.set(time.time())

    def claim(self, connections: int, seconds: float) -> None:
        """One claim leased ``connections`` in ``seconds``."""
        if connections:
            self.claimed.inc(connections)
        self.claim_seconds.observe(seconds)
