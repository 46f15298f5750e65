"""``syncsvc worker --metrics-port``: a real worker process's counters match the work it did.

A patient connects through the running service's pages (the service itself does not sync);
a ``syncsvc worker`` process then syncs the record and refreshes the token against the sandbox.
Its ``/metrics`` (operator token, loopback) must show that work with the values the database
records, and together with ``serve``'s ``/metrics`` every metric the shipped alert rules and
dashboard query.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import generate_latest

from syncsvc.sandbox.server import RunningSandbox
from syncsvc.settings import Settings
from syncsvc.web.keys import SERVICES
from syncsvc.web.metrics import Metrics
from syncsvc.work_metrics import WorkMetrics
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.multiprocess import Worker, worker_env
from tests.integration.operators.exposition import (
    Recorded,
    deploy_metric_names,
    parse,
    recorded,
    scrape,
)
from tests.integration.operators.history import TENANT
from tests.integration.web.flows import Flow
from tests.integration.web.service import RunningService

NANCY = "12724066"
WAIT_SECONDS = 30.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A refresh margin longer than the sandbox's hour-long tokens: launches schedule the first
    refresh at once, and the (long) minimum interval keeps it to one in the test."""
    return settings.replace(refresh_margin_seconds=7200, min_refresh_interval_seconds=3000)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _until(service: RunningService, worker: Worker, done: Callable[[Recorded], bool]) -> None:
    """Wait (bounded) until the database records what ``done`` looks for."""
    try:
        async with asyncio.timeout(WAIT_SECONDS):
            while not done(await recorded(service.app[SERVICES].sessionmaker)):
                assert worker.alive, worker.log()[-3000:]
                await asyncio.sleep(0.2)
    except TimeoutError:
        found = await recorded(service.app[SERVICES].sessionmaker)
        raise AssertionError((found, worker.log()[-3000:])) from None


def _worker_env(service: RunningService) -> dict[str, str]:
    return worker_env(
        service.settings,
        admin_token="test-admin-token",
        tick_seconds=0.2,
        refresh_margin_seconds=service.settings.refresh_margin_seconds,
        min_refresh_interval_seconds=service.settings.min_refresh_interval_seconds,
        decode_workers=1,
    )


async def test_worker_metrics_match_the_records_of_its_work(
    flow: Flow, http: aiohttp.ClientSession, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    service = flow.service
    await flow.register(GENERIC_TENANT, name=TENANT)
    await flow.connect("nancysmart", tenant=TENANT)
    connection = await flow.only_connection()
    port = _free_port()
    origin = f"http://127.0.0.1:{port}"
    worker = await Worker.start(
        _worker_env(service), tmp_path / "worker.log", "--metrics-port", str(port)
    )
    try:
        await _until(
            service, worker, lambda c: c.runs.get("ok") == 1 and c.refreshes.get("ok") == 1
        )
        db = await recorded(service.app[SERVICES].sessionmaker)
        m = await scrape(http, f"{origin}/metrics")

        # The operator token guards it, as serve's; the probes answer without one.
        async with http.get(f"{origin}/metrics") as response:
            assert response.status == 401
        async with http.get(f"{origin}/readyz") as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["checks"]["scheduler"] == "ok"
        async with http.get(f"{origin}/healthz") as response:
            assert response.status == 200
    finally:
        code = await worker.terminate()
    assert code == 0, worker.log()[-3000:]

    assert m.value("syncsvc_sync_runs_total", tenant=TENANT, outcome="ok") == 1
    assert m.total("syncsvc_sync_runs_total") == sum(db.runs.values())
    assert db.resources > 3
    assert m.value("syncsvc_resources_stored_total", tenant=TENANT, change="new") == db.resources
    assert m.total("syncsvc_ehr_requests_total", tenant=TENANT, status="200") == db.requests
    assert m.value("syncsvc_ehr_request_duration_seconds_count", tenant=TENANT) == db.requests
    assert m.value("syncsvc_token_refreshes_total", tenant=TENANT, outcome="ok") == 1
    assert m.total("syncsvc_token_refreshes_total") == sum(db.refreshes.values())
    assert (m.value("syncsvc_scheduler_claimed_connections_total") or 0) >= 1
    assert (m.value("syncsvc_scheduler_ticks_total", outcome="ok") or 0) >= 1
    assert (m.value("syncsvc_pipeline_write_duration_seconds_count") or 0) >= 1
    assert m.value("syncsvc_ready") == 1
    assert m.value("syncsvc_scheduler_due_connections") == 0
    for forbidden in (connection.id, NANCY, connection.user_id):
        assert forbidden not in m.text

    # The worker exports every work metric; serve adds the tenant gauges and its HTTP latency.
    # Between them, every metric the alert rules and the dashboard query is there.
    serve = await scrape(http, f"{service.origin}/metrics")
    assert serve.value("syncsvc_connections", tenant=TENANT, status="active") == 1
    assert serve.value("syncsvc_tenant_health", tenant=TENANT, status="ok") == 1
    work_names = parse(generate_latest(WorkMetrics().registry).decode()).names
    serve_only = parse(Metrics().exposition([]).decode()).names - work_names
    assert work_names <= m.names
    assert not (m.names & serve_only), "tenant gauges belong to serve"
    wanted = deploy_metric_names()
    assert wanted <= m.names | serve.names, wanted - (m.names | serve.names)
    assert wanted - serve_only <= m.names, wanted - serve_only - m.names


async def test_a_metrics_port_in_use_stops_the_worker_with_one_line(
    flow: Flow, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = await Worker.start(
            _worker_env(flow.service), tmp_path / "worker.log", "--metrics-port", str(port)
        )
        code = await worker.wait(60)
    output = worker.log()
    assert code == 1, output[-3000:]
    assert f"cannot listen on 127.0.0.1:{port}" in output
    assert "Traceback" not in output
