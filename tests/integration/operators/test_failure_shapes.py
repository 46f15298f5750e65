"""The failure shapes of the README's table, end to end over real HTTP against the sandbox.

Each test drives one shape through the real pages (and the sync engine where it happens at run
time) and then reads every surface: the patient's callback and status pages, ``connections
show``, the host API, tenant health JSON and ``/metrics``. They must say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update

from syncsvc.db.models import Connection, Credential, PendingRevocation
from syncsvc.keys import SESSIONMAKER
from syncsvc.sandbox.config import SandboxConfig, TenantConfig
from syncsvc.sandbox.patient import PageResult, ScriptedPatient
from syncsvc.sync.context import utcnow
from tests.fixtures.sandbox import CERNER_TENANT, GENERIC_TENANT
from tests.integration.cli.runner import syncsvc
from tests.integration.web.flows import Flow, sync_now

OTHER_TENANT = "0b8a0111-e8e6-4c26-a91c-5069cbc6b1ca"


@dataclass(frozen=True)
class Surfaces:
    """What every surface says about one connection and its tenant."""

    status_page: str
    cli: dict[str, Any]
    api: dict[str, Any]
    health: dict[str, Any]
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample's value (None when absent)."""
        for (sample, got), value in self.metrics.items():
            if sample == name and all(dict(got).get(k) == v for k, v in labels.items()):
                return value
        return None

    def agree_on(self, status: str, reason: str, sentence: str) -> None:
        """Every surface shows ``status`` with ``reason`` and the same patient's sentence."""
        assert (self.cli["status"], self.cli["reason"]) == (status, reason)
        assert (self.api["status"], self.api["status_reason"]) == (status, reason)
        assert self.cli["status_message"] == self.api["status_message"]
        message = self.api["status_message"]
        assert sentence in message
        assert _text(message) in _text(self.status_page)
        tenant = self.api["tenant"]["name"]
        assert self.health["connections"][status] == 1
        assert self.metric("syncsvc_connections", tenant=tenant, status=status) == 1


def _text(html: str) -> str:
    return " ".join(html.replace("&#39;", "'").replace("&#34;", '"').split())


async def surfaces(
    flow: Flow, operator: aiohttp.ClientSession, patient: ScriptedPatient, connection_id: str
) -> Surfaces:
    """Read every surface for ``connection_id``."""
    page = await patient.open(f"{flow.service.origin}/status")
    shown = await syncsvc(flow.service.settings, "connections", "show", connection_id, "--json")
    assert shown.code == 0, shown.stderr
    cli = shown.json()
    assert isinstance(cli, dict)
    async with flow.api.get(f"/api/v1/connections/{connection_id}") as response:
        assert response.status == 200
        api = await response.json()
    tenant = api["tenant"]["name"]
    async with operator.get(f"/tenants/{tenant}/health") as response:
        health = await response.json()
    async with operator.get("/metrics") as response:
        text = await response.text()
    metrics = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return Surfaces(page.body, cli, api, health, metrics)


def _tenant(config: SandboxConfig, tenant_id: str) -> TenantConfig:
    return next(t for t in config.tenants if t.id == tenant_id)


async def _stored(flow: Flow) -> tuple[list[Credential], list[PendingRevocation]]:
    async with flow.service.app[SESSIONMAKER]() as session:
        return (
            list(await session.scalars(select(Credential))),
            list(await session.scalars(select(PendingRevocation))),
        )


async def test_misbound_at_launch(
    flow: Flow, operator: aiohttp.ClientSession, sandbox_config: SandboxConfig
) -> None:
    _tenant(sandbox_config, CERNER_TENANT).policy.issue_tokens_for_tenant = OTHER_TENANT
    await flow.register(CERNER_TENANT, name="cerner")
    link = await flow.link(tenant="cerner")
    async with ScriptedPatient(username="nancysmart") as patient:
        page = await patient.connect(link)
        [connection] = await flow.connections()
        seen = await surfaces(flow, operator, patient, connection.id)

    assert page.status == 409
    assert "Your record could not be connected safely" in page.body
    assert "Your record is connected" not in page.body
    seen.agree_on("misbound", "tenant_mismatch", "issued this sign-in for a different organisation")
    assert "no records were read with it" in seen.api["status_message"]
    assert "Stopped: signed in for the wrong organisation" in seen.status_page
    assert (await _stored(flow)) == ([], [])
    [grant] = flow.sandbox.state.grants.values()
    assert grant.revoked
    assert seen.health["status"] == "failing"
    assert seen.health["rule"]["id"] == "misbound_connections"
    assert seen.health["launch_failures"]["last_hour"]["by_reason"] == {"tenant_mismatch": 1}
    assert seen.metric("syncsvc_launch_failures_total", tenant="cerner") == 1
    [finding] = [f for f in seen.health["findings"] if f["id"] == "tenant_mismatch"]
    assert "production versus sandbox" in finding["message"]
    assert "1 misbound connection(s), 1 launch(es)" in finding["message"]


async def test_misbound_at_run_time_with_opaque_tokens(
    flow: Flow, operator: aiohttp.ClientSession, sandbox_config: SandboxConfig
) -> None:
    policy = _tenant(sandbox_config, CERNER_TENANT).policy
    policy.opaque_tokens = True
    policy.issue_tokens_for_tenant = OTHER_TENANT
    await flow.register(CERNER_TENANT, name="cerner")
    link = await flow.link(tenant="cerner")
    async with ScriptedPatient(username="nancysmart") as patient:
        page = await patient.connect(link)
        # Nothing the launch could read named another tenant: it looks connected ...
        assert page.status == 200
        [connection] = await flow.connections()
        assert connection.status == "active"
        # ... until the FHIR server answers the first request with tenant-mismatch.
        report = await sync_now(flow.service)
        assert report.sync == {"misbound": 1}
        seen = await surfaces(flow, operator, patient, connection.id)

    seen.agree_on("misbound", "tenant_mismatch", "not valid for its records server")
    assert "No records had been synced with it" in seen.api["status_message"]
    assert (await _stored(flow)) == ([], [])
    [grant] = flow.sandbox.state.grants.values()
    assert grant.revoked
    assert seen.health["status"] == "failing"
    assert seen.health["errors"]["last_hour"]["by_class"]["tenant_mismatch"] == 1
    assert (
        seen.metric(
            "syncsvc_errors_last_hour",
            tenant="cerner",
            error_class="tenant_mismatch",
            resource_type="",
        )
        == 1
    )


async def test_misbound_at_refresh_keeps_the_data_synced_before(
    flow: Flow, operator: aiohttp.ClientSession, sandbox_config: SandboxConfig
) -> None:
    await flow.register(CERNER_TENANT, name="cerner")
    link = await flow.link(tenant="cerner")
    async with ScriptedPatient(username="nancysmart") as patient:
        assert (await patient.connect(link)).status == 200
        assert (await sync_now(flow.service)).sync == {"ok": 1}
        [connection] = await flow.connections()
        kept = (await surfaces(flow, operator, patient, connection.id)).api["resource_counts"]
        # The EHR now renews this grant for another tenant.
        _tenant(sandbox_config, CERNER_TENANT).policy.issue_tokens_for_tenant = OTHER_TENANT
        flow.sandbox.state.request_log.clear()
        await _make_refresh_due(flow, connection.id)
        report = await sync_now(flow.service)
        seen = await surfaces(flow, operator, patient, connection.id)

    assert report.refresh == {"misbound": 1}
    fhir = [e for e in flow.sandbox.state.request_log if "/r4/" in e.url and "/token" not in e.url]
    assert fhir == []  # found before any FHIR request with the renewed token
    seen.agree_on("misbound", "tenant_mismatch", "renewed this connection's sign-in")
    total = sum(kept.values())
    assert total > 0
    assert (
        f"The {total} record(s) synced before this was found are kept" in seen.api["status_message"]
    )
    assert seen.api["resource_counts"] == kept
    assert (await _stored(flow)) == ([], [])
    [grant] = flow.sandbox.state.grants.values()
    assert grant.revoked
    assert seen.health["rule"]["id"] == "misbound_connections"
    assert seen.health["errors"]["last_hour"]["by_class"]["tenant_mismatch"] == 1


async def test_a_refresh_naming_another_patient_is_misbound(
    flow: Flow, operator: aiohttp.ClientSession, sandbox_config: SandboxConfig
) -> None:
    await flow.register(GENERIC_TENANT, name="generic")
    link = await flow.link(tenant="generic")
    async with ScriptedPatient(username="nancysmart") as patient:
        assert (await patient.connect(link)).status == 200
        [connection] = await flow.connections()
        _tenant(sandbox_config, GENERIC_TENANT).policy.refresh_names_patient = "12742400"
        await _make_refresh_due(flow, connection.id)
        report = await sync_now(flow.service)
        seen = await surfaces(flow, operator, patient, connection.id)

    assert report.refresh == {"misbound": 1}
    seen.agree_on("misbound", "patient_mismatch", "for a different patient record")
    assert seen.health["errors"]["last_hour"]["by_class"]["patient_mismatch"] == 1
    assert seen.health["status"] == "failing"
    assert (await _stored(flow)) == ([], [])


async def test_an_expired_grant_without_offline_access_is_not_a_refusal(
    flow: Flow, operator: aiohttp.ClientSession, sandbox_config: SandboxConfig
) -> None:
    policy = _tenant(sandbox_config, GENERIC_TENANT).policy
    policy.trim_to = ["openid", "fhirUser", "launch/patient", "patient/Patient.read"]
    await flow.register(GENERIC_TENANT, name="generic")
    link = await flow.link(tenant="generic")
    async with ScriptedPatient(username="nancysmart") as patient:
        assert (await patient.connect(link)).status == 200
        [connection] = await flow.connections()
        assert (await sync_now(flow.service)).sync == {"ok": 1}
        # The EHR ends the access token before syncsvc's clock says it expires.
        flow.sandbox.state.clock_offset = 2 * 3600
        await _make_sync_due(flow, connection.id)
        report = await sync_now(flow.service)
        seen = await surfaces(flow, operator, patient, connection.id)

    assert report.sync == {"reauth": 1}
    seen.agree_on("needs_reauth", "offline_access_not_granted", "no offline access")
    by_class = seen.health["errors"]["last_day"]["by_class"]
    assert "refused" not in by_class
    assert by_class.get("offline_access_not_granted") == 1
    # This tenant never grants offline access: health does not ask patients to reconnect.
    fired = {rule["id"] for rule in seen.health["rules_fired"]}
    assert not fired & {"reauth_majority", "reauth_wave", "refused_searches"}


async def _make_refresh_due(flow: Flow, connection_id: str) -> None:
    async with flow.service.app[SESSIONMAKER].begin() as session:
        await session.execute(
            update(Connection)
            .where(Connection.id == connection_id)
            .values(next_refresh_at=utcnow(), last_refresh_at=None)
        )
        # The stored access token looks spent, so the refresh is due by the schedule too.
        await session.execute(
            update(Credential)
            .where(Credential.connection_id == connection_id)
            .values(access_expires_at=utcnow())
        )


async def _make_sync_due(flow: Flow, connection_id: str) -> None:
    async with flow.service.app[SESSIONMAKER].begin() as session:
        await session.execute(
            update(Connection).where(Connection.id == connection_id).values(next_sync_at=utcnow())
        )


async def launch_error(flow: Flow, tenant: str, **answer: str) -> PageResult:
    """A launch the EHR answers with ``answer`` (error, error_uri ...) for this very state."""
    link = await flow.link(tenant=tenant)
    async with ScriptedPatient(username="nancysmart") as patient:
        stopped = await patient.connect(link, stop_before=flow.service.callback)
        state = dict(parse_qsl(urlsplit(stopped.url).query))["state"]
        return await patient.open(
            f"{flow.service.callback}?{urlencode({'state': state, **answer})}"
        )
