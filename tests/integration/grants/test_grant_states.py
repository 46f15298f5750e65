"""One test per grant-shape row of docs/grant-states.md, over real HTTP, on every surface.

Each test connects a patient through the real pages against a sandbox tenant configured for the
shape, lets the real runner refresh and pull, then reads the status page, ``connections show``
(JSON and text), the host API, tenant health and the metrics, and checks that they agree with
each other and with the row: the connection status, the patient's sentence, the operator's rule
and the metric.
"""

from __future__ import annotations

import aiohttp
from sqlalchemy import select

from syncsvc.db.models.activity import Event
from syncsvc.sandbox.patient import ScriptedPatient, parse_forms
from syncsvc.sync.explain import KEPT_UP_TO_DATE
from syncsvc.sync.reference_words import WHAT
from syncsvc.web.keys import SERVICES
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.grants.surfaces import Clock, read_surfaces, sync, text
from tests.integration.web.flows import Flow

TENANT = "generic"
CONDITION = "patient/Condition.rs"


def _rules(health: dict[str, object]) -> set[str]:
    fired = health["rules_fired"]
    assert isinstance(fired, list)
    return {rule["id"] for rule in fired}


async def _connect(flow: Flow, patient: ScriptedPatient, expected_status: int = 200) -> str:
    """Register the generic tenant, connect through the pages; the callback page's text."""
    await flow.register(GENERIC_TENANT, name=TENANT)
    page = await patient.connect(await flow.link("user-1", tenant=TENANT))
    assert page.status == expected_status, page.body
    return page.body


def _reconnect_offered(status_page: str) -> bool:
    return any(form.action.endswith("/connect/start") for form in parse_forms(status_page))


async def test_full_grant(flow: Flow, operator: aiohttp.ClientSession) -> None:
    async with ScriptedPatient(username="nancysmart") as patient:
        callback = await _connect(flow, patient)
        report = await sync(flow)
        assert report.sync == {"ok": 1}
        connection = await flow.only_connection()
        seen = await read_surfaces(flow, patient, operator, connection.id)
    seen.assert_agree()
    assert seen.api["status"] == "active"
    assert seen.explanation["summary"] == KEPT_UP_TO_DATE
    assert "<h1>Your record is connected</h1>" in callback
    assert KEPT_UP_TO_DATE in text(callback)
    assert {t["status"] for t in seen.api["types"]} == {"ok"}
    assert seen.health["status"] == "ok"
    assert seen.health["rule"]["id"] == "all_clear"
    assert seen.metric("syncsvc_tenant_health", tenant=TENANT, status="ok") == 1
    assert seen.metric("syncsvc_connections_without_offline_access", tenant=TENANT) == 0
    assert not _reconnect_offered(seen.status_page)
    # The launch asked for the shared types the tenant lists: the clinicians who signed the
    # Observations are read and said (assert_agree: in the same words on every surface).
    references = seen.api["references"]
    assert references["stored"] > 0
    assert (references["missing"], references["outside_base"], references["waiting"]) == (0, 0, 0)
    assert references["sentence"] == f"{references['stored']} of the {WHAT} are stored."
    async with flow.api.get(
        f"/api/v1/connections/{connection.id}/resources", params={"type": "Practitioner"}
    ) as response:
        assert response.status == 200
        feed = await response.json()
    served = {entry["resource"]["resourceType"] for entry in feed["entry"]}
    assert served == {"Practitioner"}


async def test_trimmed_types(flow: Flow, operator: aiohttp.ClientSession) -> None:
    flow.sandbox.tenant(GENERIC_TENANT).policy.missing_scopes = [CONDITION]
    async with ScriptedPatient(username="nancysmart") as patient:
        callback = await _connect(flow, patient)
        assert (await sync(flow)).sync == {"ok": 1}
        connection = await flow.only_connection()
        seen = await read_surfaces(flow, patient, operator, connection.id)
    seen.assert_agree()
    trimmed = "Access to problems and diagnoses (Condition) was not granted, so they will not sync."
    assert seen.api["status"] == "active"
    assert seen.explanation["summary"] == KEPT_UP_TO_DATE
    assert trimmed in seen.explanation["sentences"]
    assert trimmed in text(callback)
    condition = next(t for t in seen.api["types"] if t["type"] == "Condition")
    assert condition["status"] == "not_granted"
    assert condition["granted"] is False
    assert "not granted by your provider" in condition["sentence"]
    # The operator sees the trim in the scope table and the type-state metric; no rule fires.
    scope = next(s for s in seen.health["scopes"] if s["scope"] == CONDITION)
    assert (scope["requested"], scope["granted"]) == (1, 0)
    assert seen.health["grants"]["type_states"]["not_granted"] == {"Condition": 1}
    assert seen.health["status"] == "ok"
    assert (
        seen.metric(
            "syncsvc_resource_type_states",
            tenant=TENANT,
            state="not_granted",
            resource_type="Condition",
        )
        == 1
    )


async def test_no_resource_scope(flow: Flow, operator: aiohttp.ClientSession) -> None:
    # A production tenant seen granting only identity scopes (and a session-bound refresh).
    policy = flow.sandbox.tenant(GENERIC_TENANT).policy
    policy.trim_to = ["openid", "fhirUser", "launch", "online_access", "launch/patient"]
    async with ScriptedPatient(username="nancysmart") as patient:
        callback = await _connect(flow, patient, expected_status=409)
        report = await sync(flow)
        connection = await flow.only_connection()
        seen = await read_surfaces(flow, patient, operator, connection.id)
    seen.assert_agree()
    # Never active, never synced: no run reports ok with nothing done.
    assert report.claimed == 0
    assert seen.api["status"] == "no_access"
    assert seen.api["status_reason"] == "no_readable_type"
    assert connection.next_sync_at is None
    assert (
        "did not let this service read any part of your health record"
        in (seen.explanation["summary"])
    )
    assert "<h1>Nothing from your record can be synced</h1>" in callback
    assert "connected" not in text(callback).lower().split("see the status")[0]
    assert seen.explanation["summary"] in text(callback)
    assert _reconnect_offered(seen.status_page)
    assert seen.health["status"] == "failing"
    assert seen.health["rule"]["id"] == "nothing_can_sync"
    assert "no_access_connections" in _rules(seen.health)
    assert seen.metric("syncsvc_tenant_health", tenant=TENANT, status="failing") == 1
    async with flow.service.app[SERVICES].sessionmaker() as session:
        runs = await session.scalars(select(Event).where(Event.kind == "sync"))
        assert list(runs) == []


async def test_no_offline_access(flow: Flow, operator: aiohttp.ClientSession) -> None:
    flow.sandbox.tenant(GENERIC_TENANT).policy.missing_scopes = ["offline_access"]
    clock = Clock(flow)
    async with ScriptedPatient(username="nancysmart") as patient:
        callback = await _connect(flow, patient)
        assert (await sync(flow, clock.now)).sync == {"ok": 1}
        connection = await flow.only_connection()
        usable = await read_surfaces(flow, patient, operator, connection.id)
        # The access token runs out: the connection now needs the patient, for that reason.
        clock.advance(2 * 3600)
        await sync(flow, clock.now)
        expired = await read_surfaces(flow, patient, operator, connection.id)
    usable.assert_agree()
    assert usable.api["status"] == "active"
    assert usable.api["scopes"]["offline_access"] is False
    offline = "Your provider did not allow offline access, so your record can be synced only until"
    assert usable.explanation["summary"].startswith(offline)
    assert offline in text(callback)
    assert "kept up to date" not in text(callback)
    assert usable.health["status"] == "degraded"
    assert usable.health["rule"]["id"] == "offline_access_not_granted"
    assert usable.metric("syncsvc_connections_without_offline_access", tenant=TENANT) == 1
    assert "Connections without offline access (no refresh token) 1" in text(usable.health_page)

    expired.assert_agree()
    assert expired.api["status"] == "needs_reauth"
    assert expired.api["status_reason"] == "offline_access_not_granted"
    assert expired.explanation["summary"] == (
        "Your provider did not allow offline access, and the access it gave has expired, so "
        "your record is no longer being updated. Reconnect to sync again."
    )
    assert _reconnect_offered(expired.status_page)
    assert expired.health["status"] == "failing"
    assert "offline_access_not_granted" in _rules(expired.health)
    assert expired.metric("syncsvc_connections_without_offline_access", tenant=TENANT) == 1
    assert [hook["type"] for hook in expired.webhooks][-1] == "connection.needs_reauth"


async def test_narrowed_at_refresh(flow: Flow, operator: aiohttp.ClientSession) -> None:
    clock = Clock(flow)
    async with ScriptedPatient(username="nancysmart") as patient:
        await _connect(flow, patient)
        assert (await sync(flow, clock.now)).sync == {"ok": 1}
        connection = await flow.only_connection()
        kept = (await read_surfaces(flow, patient, operator, connection.id)).api
        conditions = next(t for t in kept["types"] if t["type"] == "Condition")["resources"]
        assert conditions > 0
        # A registration change reaches the tenant: the next refresh no longer grants Condition.
        flow.sandbox.tenant(GENERIC_TENANT).policy.missing_scopes = [CONDITION]
        # The next sync is what needs a fresh access token, so that is when the refresh comes.
        clock.advance(flow.service.settings.sync_interval_seconds)
        report = await sync(flow, clock.now)
        assert report.refresh == {"refreshed": 1}
        seen = await read_surfaces(flow, patient, operator, connection.id)
    seen.assert_agree()
    assert seen.api["status"] == "active"
    assert CONDITION not in seen.api["scopes"]["granted"]
    condition = next(t for t in seen.api["types"] if t["type"] == "Condition")
    assert condition["status"] == "withdrawn"
    assert condition["resources"] == conditions  # kept, and said to be out of date
    assert condition["sentence"].startswith(
        "Problems and diagnoses (Condition): your provider stopped sharing this"
    )
    assert "have not been updated since" in condition["sentence"]
    assert condition["sentence"] in seen.explanation["sentences"]
    assert "Condition): " + str(conditions) + ", last updated" not in text(seen.status_page)
    assert _reconnect_offered(seen.status_page)
    [changed] = [hook for hook in seen.webhooks if hook["type"] == "connection.scopes_changed"]
    assert changed["data"]["withdrawn"] == ["Condition"]
    assert changed["data"]["added"] == []
    assert seen.health["status"] == "degraded"
    assert "withdrawn_types" in _rules(seen.health)
    assert "Condition withdrawn 1" in text(seen.health_page)
    assert seen.health["errors"]["last_hour"]["by_class"]["scope_withdrawn"] == 1
    assert (
        seen.metric(
            "syncsvc_resource_type_states",
            tenant=TENANT,
            state="withdrawn",
            resource_type="Condition",
        )
        == 1
    )
    assert (
        seen.metric("syncsvc_errors_last_hour", tenant=TENANT, error_class="scope_withdrawn") == 1
    )


async def test_widened_at_refresh(flow: Flow, operator: aiohttp.ClientSession) -> None:
    policy = flow.sandbox.tenant(GENERIC_TENANT).policy
    policy.missing_scopes = [CONDITION]
    policy.widen_on_refresh = True
    clock = Clock(flow)
    async with ScriptedPatient(username="nancysmart") as patient:
        await _connect(flow, patient)
        assert (await sync(flow, clock.now)).sync == {"ok": 1}
        connection = await flow.only_connection()
        before = await read_surfaces(flow, patient, operator, connection.id)
        # The registration change reaches the tenant: the next refresh grants Condition too.
        policy.missing_scopes = []
        clock.advance(flow.service.settings.sync_interval_seconds)
        report = await sync(flow, clock.now)
        assert report.refresh == {"refreshed": 1}
        assert report.sync == {"ok": 1}
        seen = await read_surfaces(flow, patient, operator, connection.id)
    before.assert_agree()
    seen.assert_agree()
    assert next(t for t in before.api["types"] if t["type"] == "Condition")["status"] == (
        "not_granted"
    )
    assert CONDITION in seen.api["scopes"]["granted"]
    condition = next(t for t in seen.api["types"] if t["type"] == "Condition")
    assert condition["status"] == "ok"
    assert condition["resources"] > 0
    assert seen.explanation["summary"] == KEPT_UP_TO_DATE
    assert not any("Condition" in sentence for sentence in seen.explanation["sentences"])
    [changed] = [hook for hook in seen.webhooks if hook["type"] == "connection.scopes_changed"]
    assert changed["data"]["added"] == ["Condition"]
    assert changed["data"]["withdrawn"] == []
    assert seen.health["status"] == "ok"
    assert seen.health["grants"]["type_states"]["not_granted"] == {}
    assert (
        seen.metric(
            "syncsvc_resource_type_states", tenant=TENANT, state="ok", resource_type="Condition"
        )
        == 1
    )
