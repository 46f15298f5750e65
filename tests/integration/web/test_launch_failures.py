"""Launches that must not connect, or connect with less: every one ends on a page that says why."""

from __future__ import annotations

import datetime as dt

import aiohttp
from sqlalchemy import select, update

from syncsvc.connect.links import issue_connect_link
from syncsvc.db.models.activity import PendingRevocation
from syncsvc.db.models.connections import Credential, LaunchAttempt, Tenant
from syncsvc.sandbox.config import SandboxConfig, TenantConfig
from syncsvc.sandbox.patient import ScriptedPatient, parse_forms
from syncsvc.sync.credentials import load_tokens
from syncsvc.web.keys import SERVICES, SIGNER
from tests.fixtures.sandbox import CERNER_TENANT, GENERIC_TENANT
from tests.integration.web.flows import Flow


def _tenant(config: SandboxConfig, tenant_id: str) -> TenantConfig:
    return next(t for t in config.tenants if t.id == tenant_id)


async def test_patient_who_denies_is_told_nothing_was_connected(flow: Flow) -> None:
    await flow.register(GENERIC_TENANT, name="generic")
    link = await flow.link(tenant="generic")
    async with ScriptedPatient(username="nancysmart", decision="deny") as patient:
        page = await patient.connect(link)
        # The page offers a retry through the patient session (the link is used up).
        retry = await patient.open(f"{flow.service.origin}/connect")
    assert page.status == 400
    assert "You chose not to share your record" in page.body
    assert "access_denied" in page.body
    assert "Traceback" not in page.body
    assert retry.status == 200
    assert "Connect to" in retry.body
    assert await flow.connections() == []


async def test_ehr_error_redirect_shows_the_error_uri(
    flow: Flow, sandbox_config: SandboxConfig
) -> None:
    await flow.register(CERNER_TENANT, name="cerner")
    public = next(c for c in sandbox_config.clients if c.client_id == "syncsvc-public")
    public.tenants = ["some-other-tenant"]  # not enabled here: Cerner's denied-by-server
    link = await flow.link(tenant="cerner")
    async with ScriptedPatient(username="nancysmart") as patient:
        page = await patient.connect(link)
    assert page.status == 400
    assert "refused the request" in page.body
    assert "denied-by-server" in page.body
    assert "%3Agrant%3Adenied-by-server/instances/" in page.body
    async with flow.service.app[SERVICES].sessionmaker() as session:
        [attempt] = list(await session.scalars(select(LaunchAttempt)))
    assert attempt.used_at is not None
    assert attempt.outcome == "ehr_error"


async def test_missing_unknown_replayed_and_cookieless_state(flow: Flow) -> None:
    await flow.register(GENERIC_TENANT, name="generic")
    link = await flow.link(tenant="generic")
    async with ScriptedPatient(username="nancysmart") as patient:
        done = await patient.connect(link)
        assert done.status == 200
        callback_url = next(u for u in patient.visited if u.startswith(flow.service.callback))
        replayed = await patient.open(callback_url)
        missing = await patient.open(f"{flow.service.callback}?code=abc")
        unknown = await patient.open(f"{flow.service.callback}?code=abc&state=not-a-real-state")
    async with ScriptedPatient(username="nancysmart") as stranger:
        cookieless = await stranger.open(callback_url)
    assert replayed.status == 400
    assert "already been completed" in replayed.body
    assert "state_replayed" in replayed.body
    assert "state_missing" in missing.body
    assert "state_unknown" in unknown.body
    assert "state_no_cookie" in cookieless.body
    connection = await flow.only_connection()
    assert connection.status == "active"


async def test_used_and_expired_links(flow: Flow) -> None:
    await flow.register(GENERIC_TENANT, name="generic")
    link = await flow.link(tenant="generic")
    async with ScriptedPatient(username="nancysmart") as patient:
        assert (await patient.connect(link)).status == 200
    async with ScriptedPatient(username="nancysmart") as other:
        used = await other.open(link)
        forged = await other.open(link[:-3] + "abc")
    assert used.status == 410
    assert "already been used" in used.body
    assert forged.status == 400
    assert "not valid" in forged.body
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    async with flow.service.app[SERVICES].sessionmaker.begin() as session:
        expired = await issue_connect_link(
            session,
            flow.service.app[SIGNER],
            flow.service.settings,
            user_id="user-9",
            tenant_name="generic",
            now=past,
            ttl_seconds=3600,
        )
    async with ScriptedPatient(username="nancysmart") as late:
        page = await late.open(expired.url)
    assert page.status == 410
    assert "This link has expired" in page.body


async def test_id_token_with_wrong_nonce_is_rejected(flow: Flow) -> None:
    await flow.register(GENERIC_TENANT, name="generic")
    link = await flow.link(tenant="generic")
    async with ScriptedPatient(username="nancysmart") as patient:
        stopped = await patient.connect(link, stop_before=flow.service.callback)
        # An authorization response meant for another launch: its id_token carries that nonce.
        async with flow.service.app[SERVICES].sessionmaker.begin() as session:
            await session.execute(update(LaunchAttempt).values(nonce="another-launch-nonce"))
        page = await patient.open(stopped.url)
    assert page.status == 400
    assert "identity token" in page.body
    assert "id_token_nonce" in page.body
    assert await flow.connections() == []


async def test_id_token_from_another_issuer_is_rejected(
    flow: Flow, sandbox_config: SandboxConfig
) -> None:
    # Without RFC 9207's iss in the answer, the id_token's issuer is the check that remains.
    policy = _tenant(sandbox_config, GENERIC_TENANT).policy
    policy.advertise_response_iss = policy.send_response_iss = False
    tenant = await flow.register(GENERIC_TENANT, name="generic")
    link = await flow.link(tenant="generic")
    async with ScriptedPatient(username="nancysmart") as patient:
        stopped = await patient.connect(link, stop_before=flow.service.callback)
        endpoints = {**tenant.endpoints, "issuer": "https://issuer.invalid/other"}
        async with flow.service.app[SERVICES].sessionmaker.begin() as session:
            await session.execute(
                update(Tenant)
                .where(Tenant.id == tenant.id)
                .values(endpoints=endpoints, issuer="https://issuer.invalid/other")
            )
        page = await patient.open(stopped.url)
    assert page.status == 400
    assert "id_token_iss" in page.body
    assert await flow.connections() == []


async def test_trimmed_scopes_are_explained_and_only_granted_recorded(
    flow: Flow, sandbox_config: SandboxConfig
) -> None:
    _tenant(sandbox_config, GENERIC_TENANT).policy.missing_scopes = ["patient/Condition.rs"]
    await flow.register(GENERIC_TENANT, name="generic")
    link = await flow.link(tenant="generic")
    async with ScriptedPatient(username="nancysmart") as patient:
        page = await patient.connect(link)
    assert page.status == 200
    assert "(Condition) was not granted, so they will not sync" in page.body
    connection = await flow.only_connection()
    assert "patient/Condition.rs" in connection.requested_scopes
    assert "patient/Condition.rs" not in connection.granted_scopes
    assert "patient/Observation.rs" in connection.granted_scopes


async def test_production_style_trim_to_identity_scopes_is_no_access(
    flow: Flow, sandbox_config: SandboxConfig
) -> None:
    policy = _tenant(sandbox_config, CERNER_TENANT).policy
    policy.trim_to = ["openid", "fhirUser", "launch", "online_access", "launch/patient"]
    await flow.register(CERNER_TENANT, name="cerner")
    link = await flow.link(tenant="cerner")
    async with ScriptedPatient(username="nancysmart") as patient:
        page = await patient.connect(link)
    assert page.status == 409, page.body
    assert "<h1>Nothing from your record can be synced</h1>" in page.body
    assert "did not let this service read any part of your health record" in page.body
    assert "kept up to date" not in page.body
    connection = await flow.only_connection()
    assert connection.status == "no_access"
    assert connection.next_refresh_at is None
    assert connection.next_sync_at is None


async def test_token_for_another_tenant_is_recorded_misbound(
    flow: Flow, sandbox_config: SandboxConfig
) -> None:
    other = "0b8a0111-e8e6-4c26-a91c-5069cbc6b1ca"
    _tenant(sandbox_config, CERNER_TENANT).policy.issue_tokens_for_tenant = other
    await flow.register(CERNER_TENANT, name="cerner")
    link = await flow.link(tenant="cerner")
    async with ScriptedPatient(username="nancysmart") as patient:
        page = await patient.connect(link)
    assert page.status == 409
    assert "<title>Your record could not be connected safely" in page.body
    assert "Your record is connected" not in page.body
    assert other in page.body
    assert "asked to cancel it" in page.body
    connection = await flow.only_connection()
    assert connection.status == "misbound"
    assert connection.status_reason == "tenant_mismatch"
    assert connection.next_sync_at is None
    assert connection.status_message is not None
    assert "no records were read with it" in connection.status_message
    async with flow.service.app[SERVICES].sessionmaker() as session:
        assert list(await session.scalars(select(Credential))) == []
        assert list(await session.scalars(select(PendingRevocation))) == []
    # The grant is dead at the EHR too: revoked there before the page was shown.
    [grant] = flow.sandbox.state.grants.values()
    assert grant.revoked
    assert grant.revoked_reason == "revoked by the client"
    # The EHR confirms: that token is refused here with Cerner's tenant-mismatch answer.
    fhir_calls = [e for e in flow.sandbox.state.request_log if "/Patient/" in e.url]
    assert fhir_calls == []


async def test_discovery_falls_back_to_the_capability_statement(
    flow: Flow, sandbox_config: SandboxConfig
) -> None:
    policy = _tenant(sandbox_config, GENERIC_TENANT).policy
    policy.well_known = False
    policy.advertise_code_challenge_methods = False
    tenant = await flow.register(GENERIC_TENANT, name="generic")
    assert tenant.endpoints["source"] == "capability-statement"
    link = await flow.link(tenant="generic")
    async with ScriptedPatient(username="nancysmart") as patient:
        page = await patient.connect(link)
    assert page.status == 200, page.body
    connection = await flow.only_connection()
    assert connection.status == "active"
    assert connection.token_endpoint == flow.sandbox.urls(GENERIC_TENANT).token


async def test_another_site_cannot_start_a_launch_with_its_own_link(
    flow: Flow, http: aiohttp.ClientSession
) -> None:
    """Login CSRF: a page elsewhere posting an attacker's link gets nothing started."""
    await flow.register(GENERIC_TENANT, name="generic")
    link = await flow.link("attacker", tenant="generic")
    token = link.split("link=", 1)[1]
    start = f"{flow.service.origin}/connect/start"
    form = {"link": token, "tenant": "generic"}
    async with http.post(start, data=form, allow_redirects=False) as bare:
        assert bare.status == 403
        assert "form_not_ours" in await bare.text()
    async with ScriptedPatient(username="nancysmart") as victim:
        page = await victim.open(link)  # even with a real form token in the browser ...
        [real] = [f for f in parse_forms(page.body) if "tenant" in f.fields]
        async with victim.http.post(
            start,
            data=real.fields,
            headers={"Origin": "https://attacker.example"},
            allow_redirects=False,
        ) as cross_site:
            assert cross_site.status == 403  # ... a post from another origin is refused
    async with flow.service.app[SERVICES].sessionmaker() as session:
        attempts = list(await session.scalars(select(LaunchAttempt)))
    assert attempts == []


async def test_a_typed_error_callback_shows_no_link(flow: Flow) -> None:
    """Anyone can type /callback?error=..&error_uri=..: without a real launch, no link is shown."""
    await flow.register(GENERIC_TENANT, name="generic")
    forged = (
        f"{flow.service.callback}?error=access_denied&state=made-up"
        "&error_uri=https%3A%2F%2Fphish.example%2Flogin"
    )
    async with ScriptedPatient(username="nancysmart") as victim:
        page = await victim.open(forged)
    assert page.status == 400
    assert "You chose not to share your record" in page.body
    assert "phish.example" not in page.body


async def test_reconnecting_without_offline_access_drops_the_old_refresh_token(
    flow: Flow, sandbox_config: SandboxConfig
) -> None:
    await flow.register(GENERIC_TENANT, name="generic")
    assert (await flow.connect("nancysmart", tenant="generic")).status == 200
    first = await flow.only_connection()
    async with flow.service.app[SERVICES].sessionmaker() as session:
        before = await load_tokens(session, flow.service.vault, first.id)
    assert before is not None
    assert before.refresh_token
    # The patient consents again, this time without offline access.
    policy = _tenant(sandbox_config, GENERIC_TENANT).policy
    policy.trim_to = ["openid", "fhirUser", "launch/patient", "patient/Patient.rs"]
    assert (await flow.connect("nancysmart", tenant="generic")).status == 200
    again = await flow.only_connection()
    assert again.id == first.id
    async with flow.service.app[SERVICES].sessionmaker() as session:
        after = await load_tokens(session, flow.service.vault, again.id)
    assert after is not None
    assert after.refresh_token is None
    # Looked at again when the access token expires (it then needs the patient).
    assert again.next_refresh_at == after.access_expires_at
