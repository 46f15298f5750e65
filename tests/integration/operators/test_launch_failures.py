"""Failed launches over real HTTP: recorded with the EHR's answer, counted in health and metrics,
explained to the patient by their real cause."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from syncsvc.db.models.connections import LaunchFailure
from syncsvc.health.rules import LAUNCH_FAILURES_DEGRADED, LAUNCH_FAILURES_FAILING
from syncsvc.sandbox.config import SandboxConfig
from syncsvc.sandbox.patient import PageResult, ScriptedPatient
from syncsvc.web.keys import SERVICES
from tests.fixtures.sandbox import CERNER_TENANT, GENERIC_TENANT
from tests.integration.cli.runner import syncsvc
from tests.integration.web.flows import Flow

FAKE_JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


async def health(operator: aiohttp.ClientSession, tenant: str) -> Any:
    """The tenant's health JSON."""
    async with operator.get(f"/tenants/{tenant}/health") as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def health_html(operator: aiohttp.ClientSession, tenant: str) -> str:
    """The tenant's health page."""
    async with operator.get(f"/tenants/{tenant}/health", headers={"Accept": "text/html"}) as r:
        assert r.status == 200
        return await r.text()


async def launch_failure_metric(operator: aiohttp.ClientSession, tenant: str) -> dict[str, float]:
    """``syncsvc_launch_failures_total`` of ``tenant`` by reason."""
    async with operator.get("/metrics") as response:
        text = await response.text()
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "syncsvc_launch_failures_total" and sample.labels["tenant"] == tenant
    }


async def stored_failures(flow: Flow) -> list[LaunchFailure]:
    """Every failed launch recorded, oldest first."""
    async with flow.service.app[SERVICES].sessionmaker() as session:
        return list(await session.scalars(select(LaunchFailure).order_by(LaunchFailure.id)))


async def launch(flow: Flow, tenant: str, user_id: str = "user-1") -> PageResult:
    """One launch through the real pages, as Nancy."""
    link = await flow.link(user_id, tenant=tenant)
    async with ScriptedPatient(username="nancysmart") as patient:
        return await patient.connect(link)


def _public(config: SandboxConfig) -> Any:
    return next(c for c in config.clients if c.client_id == "syncsvc-public")


async def test_missing_patient_launches_are_counted_explained_and_degrade_the_tenant(
    flow: Flow, operator: aiohttp.ClientSession, sandbox_config: SandboxConfig
) -> None:
    await flow.register(CERNER_TENANT, name="cerner")
    # Registered for launch from inside the EHR: a standalone launch gets no patient.
    _public(sandbox_config).launch = "ehr"
    pages = [await launch(flow, "cerner", f"user-{i}") for i in range(LAUNCH_FAILURES_DEGRADED)]

    for page in pages:
        assert page.status == 400
        assert "setup prevented sharing your record" in page.body
        assert "operator has been told" in page.body
        assert "Sign in with" not in page.body
        assert "missing-patient" in page.body
    failures = await stored_failures(flow)
    assert [(f.reason, f.syncsvc_reason, f.ehr_error, f.ehr_code) for f in failures] == [
        ("missing-patient", "ehr_error", "access_denied", "missing-patient")
    ] * LAUNCH_FAILURES_DEGRADED
    assert all(f.attempt_id for f in failures)
    assert failures[0].ehr_description == "No patient is in context for this launch"

    body = await health(operator, "cerner")
    assert body["launch_failures"]["last_hour"] == {
        "total": LAUNCH_FAILURES_DEGRADED,
        "by_reason": {"missing-patient": LAUNCH_FAILURES_DEGRADED},
    }
    assert body["launch_failures"]["last_day"]["total"] == LAUNCH_FAILURES_DEGRADED
    assert body["launch_failures"]["succeeded_last_day"] == 0
    assert body["status"] == "degraded"
    assert body["rule"]["id"] == "launch_failures"
    assert f"missing-patient x{LAUNCH_FAILURES_DEGRADED}" in body["rule"]["reason"]
    assert await launch_failure_metric(operator, "cerner") == {
        "missing-patient": LAUNCH_FAILURES_DEGRADED
    }
    page = await health_html(operator, "cerner")
    assert "Launch failures" in page
    assert "<code>missing-patient</code>" in page
    # The likely cause, in health and from `tenants check` alike.
    [finding] = [f for f in body["findings"] if f["id"] == "launch_registration"]
    assert (
        "registered for clinicians (provider persona) or for launch from inside"
        in (finding["message"])
    )
    assert "<code>launch_registration</code>" in page
    checked = await syncsvc(flow.service.settings, "tenants", "check", "cerner", "--json")
    assert checked.code == 0, checked.stderr
    result = checked.json()
    assert isinstance(result, dict)
    assert result["findings"] == body["findings"]
    assert result["status"] == "degraded"

    # Still nobody connects: the tenant fails outright.
    for i in range(LAUNCH_FAILURES_FAILING - LAUNCH_FAILURES_DEGRADED):
        await launch(flow, "cerner", f"user-more-{i}")
    body = await health(operator, "cerner")
    assert body["status"] == "failing"
    assert body["rule"]["id"] == "launches_failing"
    assert await launch_failure_metric(operator, "cerner") == {
        "missing-patient": LAUNCH_FAILURES_FAILING
    }


async def test_persona_errors_name_the_registration_and_are_counted(
    flow: Flow, operator: aiohttp.ClientSession, sandbox_config: SandboxConfig
) -> None:
    await flow.register(CERNER_TENANT, name="cerner")
    _public(sandbox_config).persona = "provider"

    page = await launch(flow, "cerner")

    assert page.status == 400
    assert "setup prevented sharing your record" in page.body
    assert "registration" in page.body
    [failure] = await stored_failures(flow)
    assert (failure.reason, failure.ehr_error) == ("client-persona-mismatch", "unauthorized_client")
    assert await launch_failure_metric(operator, "cerner") == {"client-persona-mismatch": 1}


async def test_a_patient_who_declines_or_reloads_is_counted_but_does_not_degrade(
    flow: Flow, operator: aiohttp.ClientSession
) -> None:
    await flow.register(GENERIC_TENANT, name="generic")
    for i in range(LAUNCH_FAILURES_DEGRADED):
        link = await flow.link(f"user-{i}", tenant="generic")
        async with ScriptedPatient(username="nancysmart", decision="deny") as patient:
            assert (await patient.connect(link)).status == 400
    link = await flow.link("user-ok", tenant="generic")
    async with ScriptedPatient(username="nancysmart") as patient:
        assert (await patient.connect(link)).status == 200
        callback = next(u for u in patient.visited if u.startswith(flow.service.callback))
        assert (await patient.open(callback)).status == 400

    body = await health(operator, "generic")
    assert body["launch_failures"]["last_day"]["by_reason"] == {
        "access_denied": LAUNCH_FAILURES_DEGRADED,
        "state_replayed": 1,
    }
    assert body["launch_failures"]["succeeded_last_day"] == 1
    assert body["status"] == "ok"
    assert await launch_failure_metric(operator, "generic") == {
        "access_denied": LAUNCH_FAILURES_DEGRADED,
        "state_replayed": 1,
    }


async def test_the_ehr_description_is_redacted_and_capped_before_it_is_stored(
    flow: Flow, operator: aiohttp.ClientSession
) -> None:
    await flow.register(GENERIC_TENANT, name="generic")
    link = await flow.link(tenant="generic")
    async with ScriptedPatient(username="nancysmart") as patient:
        stopped = await patient.connect(link, stop_before=flow.service.callback)
        state = dict(parse_qsl(urlsplit(stopped.url).query))["state"]
        description = f"upstream said access_token={FAKE_JWT} and Bearer {FAKE_JWT} " + "x" * 900
        query = urlencode(
            {"state": state, "error": "server_error", "error_description": description}
        )
        page = await patient.open(f"{flow.service.callback_for('generic')}?{query}")

    assert page.status == 400
    [failure] = await stored_failures(flow)
    assert failure.reason == "server_error"
    assert failure.ehr_description is not None
    assert len(failure.ehr_description) == 500
    assert FAKE_JWT not in failure.ehr_description
    assert "eyJ" not in failure.ehr_description
    assert failure.ehr_description.startswith("upstream said access_token=")
    assert (await health(operator, "generic"))["launch_failures"]["last_hour"]["by_reason"] == {
        "server_error": 1
    }
