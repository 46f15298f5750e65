"""One broken resource type never starves the record, and every surface says the same about it.

Against the sandbox over real HTTP: a Condition search that fails for one patient on every
request, passing 503s and a 429 that are retried in place, and a tenant's 429 that pauses all
its connections for its ``Retry-After`` and no longer.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from syncsvc.db import run_repo
from syncsvc.db.models.records import Resource, SyncRun
from syncsvc.fhir.references import REFERENCED_TYPES
from syncsvc.sandbox.config import FaultSpec, SandboxConfig
from syncsvc.sandbox.patient import ScriptedPatient
from syncsvc.sync.context import utcnow
from syncsvc.sync.runner import run_due
from syncsvc.sync.type_schedule import FAILING_AFTER_RUNS
from syncsvc.sync.type_words import type_sentence
from syncsvc.web.keys import METRICS, SERVICES
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.cli.runner import syncsvc
from tests.integration.patient.helpers import words
from tests.integration.web.flows import Flow, sync_context

TENANT = "generic"
NANCY = "12724066"
WILMA = "12742400"
SIZES = {
    "Observation": 130,
    "Condition": 12,
    "AllergyIntolerance": 3,
    "MedicationRequest": 5,
    "Immunization": 4,
    "Goal": 2,
}
TYPES = ("Patient", *SIZES)


@pytest.fixture
def sandbox_config(sandbox_config: SandboxConfig) -> SandboxConfig:
    """Nancy and Wilma with known sizes of every type the tenant is registered for."""
    tenant = next(t for t in sandbox_config.tenants if t.id == GENERIC_TENANT)
    for patient in tenant.patients:
        patient.sizes = dict(SIZES)
    return sandbox_config


async def _stored(flow: Flow, connection_id: str) -> dict[str, int]:
    async with flow.service.app[SERVICES].sessionmaker() as session:
        rows = await session.execute(
            select(Resource.resource_type, func.count())
            .where(
                Resource.connection_id == connection_id,
                Resource.deleted_at.is_(None),
                # The shared resources a record names are resolved after the run, not pulled.
                Resource.resource_type.not_in(REFERENCED_TYPES),
            )
            .group_by(Resource.resource_type)
        )
    return {resource_type: int(n) for resource_type, n in rows}


async def _scrape(
    operator: aiohttp.ClientSession,
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with operator.get("/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def _connect(flow: Flow, patient: ScriptedPatient, user_id: str) -> None:
    page = await patient.connect(await flow.link(user_id, tenant=TENANT))
    assert page.status == 200, page.body


async def test_one_type_failing_for_good_leaves_the_rest_complete_and_failing_shows_everywhere(
    flow: Flow, operator: aiohttp.ClientSession
) -> None:
    await flow.register(GENERIC_TENANT, name=TENANT, resource_types=TYPES)
    # Nancy's Condition search answers 500 on every request; everything else works.
    flow.sandbox.tenant(GENERIC_TENANT).faults[:] = [
        FaultSpec(kind="status_500", target="Condition", patient=NANCY)
    ]
    async with ScriptedPatient(username="nancysmart") as patient:
        await _connect(flow, patient, "user-1")
        connection = await flow.only_connection()

        first = await run_due(sync_context(flow.service, flow.http))

        # Every other granted type is stored completely in the first run.
        assert first.sync == {"partial": 1}, first.to_json()
        assert await _stored(flow, connection.id) == {
            "Patient": 1,
            **{t: n for t, n in SIZES.items() if t != "Condition"},
        }
        # Each later run is due when Condition's own retry is; the others are not pulled again.
        for _ in range(FAILING_AFTER_RUNS - 1):
            async with flow.service.app[SERVICES].sessionmaker() as session:
                states = await run_repo.sync_states(session, connection.id)
            due = states["Condition"].next_attempt_at
            assert due is not None
            assert states["Condition"].status == "transient_error"
            shift = due - utcnow() + dt.timedelta(seconds=1)
            mark = len(flow.sandbox.state.request_log)
            report = await run_due(
                sync_context(flow.service, flow.http, clock=lambda shift=shift: utcnow() + shift)
            )
            assert report.sync == {"partial": 1}, report.to_json()
            asked = [e.url for e in list(flow.sandbox.state.request_log)[mark:] if e.token_id]
            assert asked
            assert all("/Condition?" in url for url in asked), asked

        async with flow.service.app[SERVICES].sessionmaker() as session:
            states = await run_repo.sync_states(session, connection.id)
        condition = states["Condition"]
        assert condition.status == "failing"
        assert condition.failure_count == FAILING_AFTER_RUNS
        assert {t: s.status for t, s in states.items() if t != "Condition"} == dict.fromkeys(
            ("Patient", *(t for t in SIZES if t != "Condition")), "ok"
        )
        sentence = type_sentence(condition)
        assert sentence is not None
        assert sentence.startswith(
            "Your provider's system has not returned your problems and diagnoses (Condition) since "
        )
        page = await patient.open(f"{flow.service.origin}/status")

    # The patient's page, the CLI, the host API, tenant health and the metrics agree.
    assert page.status == 200
    assert sentence in html.unescape(words(page.body))

    shown = await syncsvc(flow.service.settings, "connections", "show", connection.id, "--json")
    assert shown.code == 0, shown.stderr
    detail = shown.json()
    assert isinstance(detail, dict)
    assert detail["sync_states"]["Condition"]["status"] == "failing"
    assert detail["sync_states"]["Condition"]["explanation"] == sentence
    text = await syncsvc(flow.service.settings, "connections", "show", connection.id)
    assert "Condition       failing (upstream_5xx) after 5 attempt(s)" in text.stdout
    assert sentence in text.stdout

    async with flow.api.get(f"/api/v1/connections/{connection.id}") as response:
        assert response.status == 200
        body = await response.json()
    [api_type] = [t for t in body["types"] if t["type"] == "Condition"]
    assert (api_type["status"], api_type["explanation"]) == ("failing", sentence)

    async with operator.get(f"/tenants/{TENANT}/health") as response:
        health = await response.json()
    assert health["status"] == "degraded"
    assert health["rule"]["id"] == "type_failing"
    assert health["type_failures"] == [
        {
            "resource_type": "Condition",
            "failing_connections": 1,
            "active_connections": 1,
            "at_tenant": False,
        }
    ]
    samples = await _scrape(operator)
    key = frozenset({("tenant", TENANT), ("resource_type", "Condition")})
    assert samples[("syncsvc_type_failures", key)] == 1


async def test_a_type_failing_for_most_patients_is_said_to_fail_at_the_tenant(
    flow: Flow, operator: aiohttp.ClientSession
) -> None:
    await flow.register(GENERIC_TENANT, name=TENANT, resource_types=TYPES)
    flow.sandbox.tenant(GENERIC_TENANT).faults[:] = [
        FaultSpec(kind="status_503", target="Condition")
    ]
    for index, username in enumerate(("nancysmart", "wilmasmart")):
        async with ScriptedPatient(username=username) as patient:
            await _connect(flow, patient, f"user-{index}")
    connections = await flow.connections()
    first = await run_due(sync_context(flow.service, flow.http))
    assert first.sync == {"partial": 2}
    for connection in connections:
        stored = await _stored(flow, connection.id)
        assert stored == {"Patient": 1, **{t: n for t, n in SIZES.items() if t != "Condition"}}
    # Persistent failures: make both connections' Condition failing as the runs would.
    async with flow.service.app[SERVICES].sessionmaker.begin() as session:
        for connection in connections:
            await run_repo.save_sync_state(
                session,
                connection.id,
                "Condition",
                now=utcnow(),
                status="failing",
                failure_count=FAILING_AFTER_RUNS,
            )

    async with operator.get(f"/tenants/{TENANT}/health") as response:
        health = await response.json()
    assert health["rule"]["id"] == "type_failing_at_tenant"
    assert health["rule"]["reason"].startswith("Condition searches fail at this tenant (2 of 2")
    assert health["type_failures"][0]["at_tenant"] is True
    async with operator.get(f"/tenants/{TENANT}/health", headers={"Accept": "text/html"}) as page:
        page_text = html.unescape(await page.text())
    assert "Condition searches fail at this tenant" in page_text
    samples = await _scrape(operator)
    key = frozenset({("tenant", TENANT), ("resource_type", "Condition")})
    assert samples[("syncsvc_type_failures", key)] == 2


async def test_passing_503s_and_a_429_are_retried_in_place_and_the_first_run_completes(
    flow: Flow, operator: aiohttp.ClientSession
) -> None:
    await flow.register(GENERIC_TENANT, name=TENANT, resource_types=TYPES)
    flow.sandbox.tenant(GENERIC_TENANT).faults[:] = [
        FaultSpec(kind="status_503", target="Condition", count=2, with_retry_after=True),
        FaultSpec(kind="throttle", target="Observation", count=1, retry_after=1),
    ]
    async with ScriptedPatient(username="nancysmart") as patient:
        await _connect(flow, patient, "user-1")
    connection = await flow.only_connection()
    ctx = sync_context(flow.service, flow.http)
    # Counted in the service's own registry, as its scheduler would.
    counted = dataclasses.replace(ctx, metrics=flow.service.app[METRICS].work)

    report = await run_due(counted)

    assert report.sync == {"ok": 1}, report.to_json()
    assert await _stored(flow, connection.id) == {"Patient": 1, **SIZES}
    async with flow.service.app[SERVICES].sessionmaker() as session:
        [run] = list(await session.scalars(select(SyncRun)))
    assert (run.outcome, run.retries) == ("ok", 3)
    samples = await _scrape(operator)
    for reason, count in (("http_503", 2), ("http_429", 1)):
        key = frozenset({("tenant", TENANT), ("reason", reason)})
        assert samples[("syncsvc_ehr_retries_total", key)] == count


async def test_a_retry_after_a_refused_token_is_counted_in_the_run_and_the_counter(
    flow: Flow, operator: aiohttp.ClientSession
) -> None:
    await flow.register(GENERIC_TENANT, name=TENANT, resource_types=TYPES)
    async with ScriptedPatient(username="nancysmart") as patient:
        await _connect(flow, patient, "user-1")
    connection = await flow.only_connection()
    # The EHR's clock passes the hour-long token's expiry while syncsvc still trusts it: the
    # first request is refused with invalid_token, refreshed once and retried.
    flow.sandbox.state.clock_offset += 3700
    ctx = sync_context(flow.service, flow.http)
    counted = dataclasses.replace(ctx, metrics=flow.service.app[METRICS].work)

    report = await run_due(counted)

    assert report.sync == {"ok": 1}, report.to_json()
    assert await _stored(flow, connection.id) == {"Patient": 1, **SIZES}
    refused = [e for e in flow.sandbox.state.request_log if e.status == 401]
    assert len(refused) >= 1
    async with flow.service.app[SERVICES].sessionmaker() as session:
        [run] = list(await session.scalars(select(SyncRun)))
    # One retry per refused request, in the run record and in the counter alike.
    assert (run.outcome, run.retries) == ("ok", len(refused))
    samples = await _scrape(operator)
    key = frozenset({("tenant", TENANT), ("reason", "invalid_token")})
    assert samples[("syncsvc_ehr_retries_total", key)] == run.retries
    retried = sum(v for (name, _), v in samples.items() if name == "syncsvc_ehr_retries_total")
    assert retried == run.retries
