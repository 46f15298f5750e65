"""The failure shapes of docs/grant-states.md, end to end over real HTTP against the sandbox.

Each test drives one shape through the real pages (and the sync engine where it happens at run
time) and then reads every surface: the patient's callback and status pages, ``connections
show``, the host API, tenant health JSON and ``/metrics``. They must say the same thing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update

from syncsvc.db.models.activity import PendingRevocation, WebhookDelivery
from syncsvc.db.models.connections import Connection, Credential, LaunchAttempt
from syncsvc.sandbox.auth_support import INVALID_LAUNCH_CODE
from syncsvc.sandbox.config import SandboxConfig, TenantConfig
from syncsvc.sandbox.patient import PageResult, ScriptedPatient
from syncsvc.settings import Secret, Settings
from syncsvc.sync.context import utcnow
from syncsvc.web.keys import SERVICES
from tests.fixtures.sandbox import CERNER_TENANT, GENERIC_TENANT
from tests.integration.cli.runner import syncsvc
from tests.integration.web.flows import Flow, sync_now

OTHER_TENANT = "0b8a0111-e8e6-4c26-a91c-5069cbc6b1ca"
#: Nothing listens here: the queued payloads are read back from the database instead.
WEBHOOK_URL = "http://127.0.0.1:9/hooks"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Webhooks set up, so that what the host application would be sent can be read back."""
    return settings.replace(webhook_url=WEBHOOK_URL, webhook_secret=Secret("s" * 32))


@dataclass(frozen=True)
class Surfaces:
    """What every surface says about one connection and its tenant."""

    status_page: str
    cli: dict[str, Any]
    api: dict[str, Any]
    health: dict[str, Any]
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float]
    #: The payloads queued for the host application about this connection, oldest first.
    webhooks: list[dict[str, Any]]

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
        hooks = [w for w in self.webhooks if w["type"] == f"connection.{status}"]
        assert hooks, [w["type"] for w in self.webhooks]
        assert hooks[-1]["data"]["message"] == message
        assert hooks[-1]["data"]["status"] == status
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
    async with flow.service.app[SERVICES].sessionmaker() as session:
        queued = await session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.connection_id == connection_id)
            .order_by(WebhookDelivery.created_at)
        )
        hooks = [orjson.loads(w.payload) for w in queued]
    return Surfaces(page.body, cli, api, health, metrics, hooks)


def _tenant(config: SandboxConfig, tenant_id: str) -> TenantConfig:
    return next(t for t in config.tenants if t.id == tenant_id)


async def _stored(flow: Flow) -> tuple[list[Credential], list[PendingRevocation]]:
    async with flow.service.app[SERVICES].sessionmaker() as session:
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


async def test_a_misbound_relaunch_ends_the_earlier_grant_at_the_ehr_too(
    flow: Flow, operator: aiohttp.ClientSession, sandbox_config: SandboxConfig
) -> None:
    """Nancy reconnects and this time the EHR issues the grant for another tenant: both grants
    end at the EHR, the earlier one included, and no token of either is left stored."""
    await flow.register(CERNER_TENANT, name="cerner")
    async with ScriptedPatient(username="nancysmart") as patient:
        first = await patient.connect(await flow.link(tenant="cerner"))
    assert first.status == 200
    [earlier] = flow.sandbox.state.grants.values()
    assert not earlier.revoked
    _tenant(sandbox_config, CERNER_TENANT).policy.issue_tokens_for_tenant = OTHER_TENANT
    async with ScriptedPatient(username="nancysmart") as patient:
        page = await patient.connect(await flow.link(tenant="cerner"))
        [connection] = await flow.connections()
        seen = await surfaces(flow, operator, patient, connection.id)

    assert page.status == 409
    seen.agree_on("misbound", "tenant_mismatch", "issued this sign-in for a different organisation")
    grants = list(flow.sandbox.state.grants.values())
    assert len(grants) == 2
    assert all(grant.revoked for grant in grants)
    assert (await _stored(flow)) == ([], [])


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
    policy.trim_to = ["openid", "fhirUser", "launch/patient", "patient/Patient.rs"]
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
    seen.agree_on("needs_reauth", "offline_access_not_granted", "did not allow offline access")
    by_class = seen.health["errors"]["last_day"]["by_class"]
    assert "refused" not in by_class
    assert by_class.get("offline_access_not_granted") == 1
    # This tenant never grants offline access: health does not ask patients to reconnect.
    fired = {rule["id"] for rule in seen.health["rules_fired"]}
    assert not fired & {"reauth_majority", "reauth_wave", "refused_searches"}


async def _make_refresh_due(flow: Flow, connection_id: str) -> None:
    async with flow.service.app[SERVICES].sessionmaker.begin() as session:
        await session.execute(
            update(Connection)
            .where(Connection.id == connection_id)
            .values(next_refresh_at=utcnow(), next_sync_at=utcnow(), last_refresh_at=None)
        )
        # The stored access token looks spent and a sync is due, which needs a fresh one: the
        # refresh is due by the schedule too.
        await session.execute(
            update(Credential)
            .where(Credential.connection_id == connection_id)
            .values(access_expires_at=utcnow())
        )


async def _make_sync_due(flow: Flow, connection_id: str) -> None:
    async with flow.service.app[SERVICES].sessionmaker.begin() as session:
        await session.execute(
            update(Connection).where(Connection.id == connection_id).values(next_sync_at=utcnow())
        )


def _public(config: SandboxConfig) -> Any:
    return next(c for c in config.clients if c.client_id == "syncsvc-public")


async def _declined(flow: Flow, config: SandboxConfig, user: str) -> PageResult:
    link = await flow.link(user, tenant="cerner")
    async with ScriptedPatient(username="nancysmart", decision="deny") as patient:
        return await patient.connect(link)


async def _one_launch(flow: Flow, user: str) -> PageResult:
    link = await flow.link(user, tenant="cerner")
    async with ScriptedPatient(username="nancysmart") as patient:
        return await patient.connect(link)


async def _missing_patient(flow: Flow, config: SandboxConfig, user: str) -> PageResult:
    _public(config).launch = "ehr"
    return await _one_launch(flow, user)


async def _persona(flow: Flow, config: SandboxConfig, user: str) -> PageResult:
    _public(config).persona = "provider"
    return await _one_launch(flow, user)


async def _denied_by_server(flow: Flow, config: SandboxConfig, user: str) -> PageResult:
    _public(config).tenants = ["some-other-tenant"]
    return await _one_launch(flow, user)


async def _invalid_launch_code(flow: Flow, config: SandboxConfig, user: str) -> PageResult:
    urn = quote(INVALID_LAUNCH_CODE, safe="")
    uri = f"{flow.sandbox.origin}/errors/{urn}/instances/1?persona=patient"
    link = await flow.link(user, tenant="cerner")
    async with ScriptedPatient(username="nancysmart") as patient:
        stopped = await patient.connect(link, stop_before=flow.service.callback)
        state = dict(parse_qsl(urlsplit(stopped.url).query))["state"]
        answer = {"state": state, "error": "invalid_request", "error_uri": uri}
        return await patient.open(f"{flow.service.callback_for('cerner')}?{urlencode(answer)}")


async def _no_patient(flow: Flow, config: SandboxConfig, user: str) -> PageResult:
    _tenant(config, CERNER_TENANT).policy.token_response_patient = False
    return await _one_launch(flow, user)


async def _identity_token(flow: Flow, config: SandboxConfig, user: str) -> PageResult:
    link = await flow.link(user, tenant="cerner")
    async with ScriptedPatient(username="nancysmart") as patient:
        stopped = await patient.connect(link, stop_before=flow.service.callback)
        # An answer meant for another launch: its id_token carries that launch's nonce.
        async with flow.service.app[SERVICES].sessionmaker.begin() as session:
            await session.execute(update(LaunchAttempt).values(nonce="another-launch-nonce"))
        return await patient.open(stopped.url)


async def _replayed(flow: Flow, config: SandboxConfig, user: str) -> PageResult:
    link = await flow.link(user, tenant="cerner")
    async with ScriptedPatient(username="nancysmart") as patient:
        assert (await patient.connect(link)).status == 200
        callback = next(u for u in patient.visited if u.startswith(flow.service.callback))
        return await patient.open(callback)


LaunchShape = Callable[[Flow, SandboxConfig, str], Awaitable[PageResult]]


@pytest.mark.parametrize(
    ("shape", "reason", "sentence", "counts"),
    [
        (_declined, "access_denied", "You chose not to share your record", False),
        (_missing_patient, "missing-patient", "setup for this application did not allow", True),
        (_persona, "client-persona-mismatch", "setup for this application did not allow", True),
        (_invalid_launch_code, "invalid-launch-code", "signing in again will not help", True),
        (_denied_by_server, "denied-by-server", "refused the request", True),
        (_no_patient, "no_patient", "did not say which patient record was shared", True),
        (_identity_token, "id_token_nonce", "identity token", True),
        (_replayed, "state_replayed", "already been completed", False),
    ],
)
async def test_each_launch_error(
    flow: Flow,
    operator: aiohttp.ClientSession,
    sandbox_config: SandboxConfig,
    shape: LaunchShape,
    reason: str,
    sentence: str,
    counts: bool,
) -> None:
    await flow.register(CERNER_TENANT, name="cerner")
    pages = [await shape(flow, sandbox_config, f"user-{i}") for i in range(3)]

    for page in pages:
        assert page.status == 400, page.body
        assert sentence in _text(page.body)
        assert "Traceback" not in page.body
        assert "Your record is connected" not in page.body
    async with operator.get("/tenants/cerner/health") as response:
        health = await response.json()
    assert health["launch_failures"]["last_hour"]["by_reason"] == {reason: 3}
    async with operator.get("/metrics") as response:
        exposition = await response.text()
    assert f'syncsvc_launch_failures_total{{reason="{reason}",tenant="cerner"}} 3.0' in exposition
    if counts:
        assert health["status"] == "degraded"
        assert health["rule"]["id"] == "launch_failures"
    else:
        # The patient's own choice, or a reloaded callback: counted, never held against the EHR.
        assert health["status"] == "ok"
    # No failed launch leaves a connection behind that could look connected.
    # (A reloaded callback's launch itself had connected: one active connection per user.)
    active = [c.user_id for c in await flow.connections() if c.status == "active"]
    assert active == ([f"user-{i}" for i in range(3)] if reason == "state_replayed" else [])
