"""``/metrics``: Prometheus exposition of request latencies and tenant health, per application."""

from __future__ import annotations

import datetime as dt

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from syncsvc.sync.context import utcnow
from syncsvc.web.keys import METRICS
from syncsvc.web.metrics import Metrics
from tests.integration.operators.history import TENANT, add_events, connected_tenant
from tests.integration.web.flows import Flow, set_status
from tests.integration.web.service import RunningService


async def _scrape(operator: aiohttp.ClientSession) -> list[Sample]:
    async with operator.get("/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = await response.text()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def _value(samples: list[Sample], name: str, **labels: str) -> float | None:
    for sample in samples:
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    return None


async def test_tenant_gauges_come_from_the_database_at_scrape_time(
    flow: Flow, operator: aiohttp.ClientSession
) -> None:
    service = flow.service
    tenant, connections = await connected_tenant(flow, usernames=("nancysmart", "wilmasmart"))
    samples = await _scrape(operator)
    assert _value(samples, "syncsvc_connections", tenant=TENANT, status="active") == 2
    assert _value(samples, "syncsvc_connections", tenant=TENANT, status="misbound") == 0
    assert _value(samples, "syncsvc_tenant_health", tenant=TENANT, status="ok") == 1
    assert _value(samples, "syncsvc_tenant_health", tenant=TENANT, status="failing") == 0
    p95 = _value(samples, "syncsvc_sync_lag_seconds", tenant=TENANT, quantile="0.95")
    assert p95 is not None
    assert p95 >= 0
    age = _value(samples, "syncsvc_last_successful_sync_age_seconds", tenant=TENANT)
    assert age is not None
    assert age >= 0
    assert _value(samples, "syncsvc_discovery_age_seconds", tenant=TENANT) is not None
    assert _value(samples, "syncsvc_errors_last_hour", tenant=TENANT) is None

    await add_events(
        service,
        tenant,
        utcnow() - dt.timedelta(minutes=1),
        {"error_class": "throttled", "count": 4},
        {"error_class": "insufficient_scope", "resource_type": "Condition"},
    )
    # Older than an hour: not in the gauge.
    await add_events(
        service, tenant, utcnow() - dt.timedelta(hours=2), {"error_class": "upstream_5xx"}
    )
    await set_status(service, connections[0].id, "misbound")
    samples = await _scrape(operator)
    errors = "syncsvc_errors_last_hour"
    assert _value(samples, errors, tenant=TENANT, error_class="throttled", resource_type="") == 4
    assert (
        _value(
            samples,
            errors,
            tenant=TENANT,
            error_class="insufficient_scope",
            resource_type="Condition",
        )
        == 1
    )
    assert _value(samples, errors, tenant=TENANT, error_class="upstream_5xx") is None
    assert _value(samples, "syncsvc_connections", tenant=TENANT, status="misbound") == 1
    assert _value(samples, "syncsvc_tenant_health", tenant=TENANT, status="failing") == 1


async def test_request_latency_by_route_pattern_and_status(
    service: RunningService,
    operator: aiohttp.ClientSession,
    anonymous: aiohttp.ClientSession,
) -> None:
    async with operator.get("/tenants/someone/health") as response:
        assert response.status == 404
    async with anonymous.get("/tenants/health") as response:
        assert response.status == 401
    async with anonymous.get("/no/such/page/12724066") as response:
        assert response.status == 404
    async with anonymous.get("/healthz") as response:
        assert response.status == 200
    samples = await _scrape(operator)
    count = "syncsvc_http_request_duration_seconds_count"
    # The pattern, never the concrete path (tenant names and ids stay out of labels).
    assert _value(samples, count, route="/tenants/{tenant}/health", status="404") == 1
    assert _value(samples, count, route="/tenants/health", method="GET", status="401") == 1
    assert _value(samples, count, route="unmatched", status="404") == 1
    assert _value(samples, count, route="/healthz", status="200") == 1
    routes = {s.labels.get("route") for s in samples if s.name == count}
    assert not any("someone" in str(r) or "12724066" in str(r) for r in routes)
    assert _value(samples, "syncsvc_http_request_duration_seconds_bucket", le="+Inf") is not None


async def test_every_application_has_its_own_registry(service: RunningService) -> None:
    other = Metrics()
    assert other.registry is not service.app[METRICS].registry
    # A fresh registry has observed nothing, whatever other applications in the process did.
    text = other.exposition([]).decode()
    assert "syncsvc_http_request_duration_seconds_count" not in text
    assert "# TYPE syncsvc_connections gauge" in text
