"""``serve``'s ``/metrics`` counts the work its own scheduler did, as the database records it.

The service runs with its background scheduler (as ``syncsvc serve`` does), a patient connects
through the real pages, and the scheduler's ticks sync the record and then refresh the token.
The counters scraped over HTTP must equal the run records, the stored resources, the refresh
events and the requests the sandbox saw; labels name the tenant, never a connection or patient.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import generate_latest

from syncsvc.fhir.references import REFERENCED_TYPES
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.services import Services
from syncsvc.settings import Settings
from syncsvc.vault import Vault
from syncsvc.web.app import create_app
from syncsvc.web.keys import SERVICES
from syncsvc.web.metrics import Metrics
from syncsvc.work_metrics import WorkMetrics
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.operators.exposition import (
    Exposition,
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
WAIT_SECONDS = 60.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A quick tick, so the scheduler picks new work up within the test; and a refresh margin
    longer than the sandbox's hour-long tokens, so a token is refreshed at once and then not
    before the (long) minimum interval: once in the test, however slow the machine."""
    return settings.replace(
        tick_seconds=0.2,
        decode_workers=0,
        refresh_margin_seconds=7200,
        min_refresh_interval_seconds=3000,
    )


@pytest.fixture
async def service(
    settings: Settings, service_socket: socket.socket, service_origin: str
) -> AsyncIterator[RunningService]:
    """The service with its background scheduler, as ``syncsvc serve`` runs it."""
    app = create_app(Services(settings, background=True))
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    await web.SockSite(runner, service_socket).start()
    try:
        yield RunningService(app, service_origin, settings, Vault.from_settings(settings))
    finally:
        await runner.cleanup()


async def _until(service: RunningService, done: Callable[[Recorded], bool]) -> None:
    """Wait (bounded) until the database records what ``done`` looks for."""
    async with asyncio.timeout(WAIT_SECONDS):
        while not done(await recorded(service.app[SERVICES].sessionmaker)):  # noqa: ASYNC110 - the database
            await asyncio.sleep(0.1)


async def _metrics(http: aiohttp.ClientSession, service: RunningService) -> Exposition:
    return await scrape(http, f"{service.origin}/metrics")


async def test_counters_match_the_records_of_the_work_the_scheduler_did(
    flow: Flow, http: aiohttp.ClientSession, sandbox: RunningSandbox
) -> None:
    service = flow.service
    await flow.register(GENERIC_TENANT, name=TENANT)
    # Taken before the launch: the scheduler may start the pull while the callback page is
    # still being answered, so no moment after it separates the two.
    since = sandbox.state.now()
    await flow.connect("nancysmart", tenant=TENANT)
    connection = await flow.only_connection()
    base = sandbox.urls(GENERIC_TENANT).fhir_base
    await _until(service, lambda c: c.runs.get("ok") == 1 and c.refreshes.get("ok") == 1)
    db = await recorded(service.app[SERVICES].sessionmaker)
    m = await _metrics(http, service)

    # Runs by outcome equal the run records; resources stored equal the rows.
    assert m.value("syncsvc_sync_runs_total", tenant=TENANT, outcome="ok") == 1
    assert m.total("syncsvc_sync_runs_total") == sum(db.runs.values()) == 1
    assert db.resources > 3
    assert m.value("syncsvc_resources_stored_total", tenant=TENANT, change="new") == db.resources
    assert m.total("syncsvc_resources_stored_total", change="changed") == 0
    assert m.total("syncsvc_resources_rejected_total") == 0

    # Every FHIR request of the run, by type and status, as the run record and the EHR saw them.
    requests = m.total("syncsvc_ehr_requests_total", tenant=TENANT)
    assert requests == db.requests
    seen_by_ehr = [
        e
        for e in sandbox.state.request_log
        if e.token_id and e.url.startswith(f"{base}/") and e.at >= since
    ]
    # The launch itself reads the Patient once (the name on its page), the run once more; every
    # other request is the run's.
    patient_reads = [e for e in seen_by_ehr if e.url.startswith(f"{base}/Patient/")]
    assert len(patient_reads) == 2
    assert requests == len(seen_by_ehr) - 1
    assert m.value("syncsvc_ehr_requests_total", tenant=TENANT, resource_type="Patient") == 1
    # The pulled types, beside the shared resources their records name (read after the run).
    pulled = m.label_values("syncsvc_ehr_requests_total", "resource_type") - set(REFERENCED_TYPES)
    assert pulled == {"Patient", "Observation", "Condition"}
    assert m.label_values("syncsvc_ehr_requests_total", "status") == {"200"}
    assert m.value("syncsvc_ehr_request_duration_seconds_count", tenant=TENANT) == requests

    # The scheduler's own figures, and the pipeline that wrote the pages.
    assert (m.value("syncsvc_scheduler_ticks_total", outcome="ok") or 0) >= 1
    assert (m.value("syncsvc_scheduler_claimed_connections_total") or 0) >= 1
    assert (m.value("syncsvc_scheduler_claim_duration_seconds_count") or 0) >= 1
    last_tick = m.value("syncsvc_scheduler_last_tick_timestamp_seconds")
    assert last_tick is not None
    assert abs(last_tick - dt.datetime.now(dt.UTC).timestamp()) < 30
    assert (m.value("syncsvc_pipeline_write_duration_seconds_count") or 0) >= 1
    assert m.value("syncsvc_pipeline_write_queue_units") is not None
    assert m.value("syncsvc_pipeline_decode_queue_pages") == 0
    assert m.value("syncsvc_ready") == 1
    assert m.value("syncsvc_scheduler_due_connections") == 0
    assert m.value("syncsvc_scheduler_oldest_due_seconds") == 0

    # The refresh event and the counter agree.
    assert m.value("syncsvc_token_refreshes_total", tenant=TENANT, outcome="ok") == 1
    assert m.total("syncsvc_token_refreshes_total") == sum(db.refreshes.values()) == 1

    # Bounded labels: the tenant's name, never a connection, patient or user id.
    for forbidden in (connection.id, NANCY, connection.patient_id, connection.user_id):
        assert forbidden not in m.text
    # What the shipped rules and dashboard query, serve exports.
    assert deploy_metric_names() <= m.names, deploy_metric_names() - m.names


async def test_a_scrape_without_the_database_says_not_ready_and_keeps_the_counters(
    tmp_path: Path,
    http: aiohttp.ClientSession,
    service_socket: socket.socket,
    service_origin: str,
) -> None:
    # A database file in a directory that does not exist: every query fails.
    settings = Settings.for_tests(
        data_dir=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/missing/syncsvc.db",
        public_url=service_origin,
    )
    app = create_app(Services(settings))
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    await web.SockSite(runner, service_socket).start()
    try:
        m = await scrape(http, f"{service_origin}/metrics")
        assert m.value("syncsvc_ready") == 0
        assert m.value("syncsvc_scheduler_due_connections") is None
        assert "syncsvc_sync_runs_total" in m.names
        async with http.get(f"{service_origin}/metrics") as response:
            assert response.status == 401
    finally:
        await runner.cleanup()


def test_work_metrics_are_part_of_the_application_registry() -> None:
    app_names = parse(Metrics().exposition([]).decode()).names
    work_names = parse(generate_latest(WorkMetrics().registry).decode()).names
    assert work_names <= app_names
    assert {"syncsvc_ehr_requests_total", "syncsvc_ehr_request_duration_seconds_bucket"} <= (
        work_names
    )
