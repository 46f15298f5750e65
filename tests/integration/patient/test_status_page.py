"""The patient's status page: what is connected, synced and granted, and what needs them."""

from __future__ import annotations

import aiohttp

from syncsvc.sandbox.patient import ScriptedPatient, parse_forms
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.patient.helpers import connect_and_sync, counts, form_posting_to, words
from tests.integration.web.flows import Flow, set_status
from tests.integration.web.service import RunningService


async def test_status_page_shows_provider_last_sync_counts_and_grant(flow: Flow) -> None:
    async with ScriptedPatient(username="nancysmart") as patient:
        connection = await connect_and_sync(flow, patient)
        page = await patient.open(f"{flow.service.origin}/status")
    assert page.status == 200, page.body
    body = words(page.body)
    assert "Generic SMART Sandbox" in body
    assert "Connected." in body
    assert "Last synced: not yet" not in body
    stored = await counts(flow.service, connection.id)
    assert stored["resources"] > 0
    assert f"What is synced ({stored['resources']} records)" in body
    assert "Lab results and vital signs (Observation):" in body
    assert "Your demographics (Patient): 1" in body
    assert "What you shared" in body
    assert "lab results and vital signs (Observation)" in body
    # The page names nothing that is not this patient's, and offers the way out.
    assert f"/status/connections/{connection.id}/disconnect" in body
    assert "Reconnect" not in body


async def test_status_page_explains_trimmed_scopes(flow: Flow) -> None:
    # A registration change that has not reached the EHR: Condition is silently not granted.
    flow.sandbox.tenant(GENERIC_TENANT).policy.missing_scopes = ["patient/Condition.rs"]
    async with ScriptedPatient(username="nancysmart") as patient:
        await flow.register(GENERIC_TENANT, name="generic")
        connected = await patient.connect(await flow.link("user-7", tenant="generic"))
        assert connected.status == 200, connected.body
        page = await patient.open(f"{flow.service.origin}/status")
    body = words(page.body)
    assert "Access to problems and diagnoses (Condition) was not granted" in body
    assert "Nothing has been synced yet." in body


async def test_needs_reauth_offers_reconnect_and_the_ehrs_link(flow: Flow) -> None:
    async with ScriptedPatient(username="nancysmart") as patient:
        connection = await connect_and_sync(flow, patient)
        await set_status(
            flow.service,
            connection.id,
            "needs_reauth",
            reason="invalid_grant",
            message="The EHR no longer accepts this connection.",
            error_uri="https://ehr.example/help/invalid_grant",
        )
        page = await patient.open(f"{flow.service.origin}/status")
        assert "Needs you to reconnect." in words(page.body)
        assert 'href="https://ehr.example/help/invalid_grant"' in page.body
        reconnect = form_posting_to(page.body, "/connect/start")
        assert reconnect.fields["csrf"]  # the page's own form token rides along
        assert {k: v for k, v in reconnect.fields.items() if k != "csrf"} == {
            "link": "",
            "tenant": "generic",
        }
        authorize = flow.sandbox.urls(GENERIC_TENANT).authorize
        started = await patient.submit(page.url, reconnect, stop_before=authorize)
    # The session alone starts a new launch for that tenant: no new link needed.
    assert started.status == 303
    assert started.url.startswith(authorize)


async def test_misbound_is_explained(flow: Flow) -> None:
    async with ScriptedPatient(username="nancysmart") as patient:
        connection = await connect_and_sync(flow, patient)
        await set_status(
            flow.service,
            connection.id,
            "misbound",
            reason="tenant_mismatch",
            message="Generic issued this sign-in for a different organisation.",
        )
        page = await patient.open(f"{flow.service.origin}/status")
    assert "Stopped: signed in for the wrong organisation." in words(page.body)
    assert "issued this sign-in for a different organisation" in words(page.body)
    assert not [f for f in parse_forms(page.body) if "/connect/start" in f.action]


async def test_without_a_session_the_page_says_how_to_get_back(
    service: RunningService, http: aiohttp.ClientSession
) -> None:
    for path in ("/status", "/status/connections/whatever/disconnect"):
        async with http.get(f"{service.origin}{path}") as response:
            body = await response.text()
        assert response.status == 401, path
        assert "open the link the application gave you" in words(body)
    async with http.post(
        f"{service.origin}/status/connections/whatever/disconnect", data={"csrf": "x"}
    ) as response:
        assert response.status == 401


async def test_a_session_without_connections_offers_to_connect(flow: Flow) -> None:
    await flow.register(GENERIC_TENANT, name="generic")
    async with ScriptedPatient(username="nancysmart") as patient:
        # Pressing "Connect" starts the session; the patient then walks away from the EHR.
        await patient.connect(
            await flow.link("user-9", tenant="generic"),
            stop_before=flow.sandbox.urls(GENERIC_TENANT).authorize,
        )
        page = await patient.open(f"{flow.service.origin}/status")
    assert page.status == 200
    assert "You have not connected a health record yet." in words(page.body)


async def test_the_connected_page_links_to_the_status_page(flow: Flow) -> None:
    await flow.register(GENERIC_TENANT, name="generic")
    page = await flow.connect("nancysmart", tenant="generic", user_id="user-7")
    assert 'href="/status"' in page.body
