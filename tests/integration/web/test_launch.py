"""The standalone patient launch end to end: real pages, the sandbox EHR, SQLite and PostgreSQL."""

from __future__ import annotations

import aiohttp
from sqlalchemy import select

from syncsvc.db.models.connections import Credential, LaunchAttempt
from syncsvc.sandbox.patient import ScriptedPatient, parse_forms
from syncsvc.sync.credentials import load_tokens
from syncsvc.web.keys import SERVICES
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT
from tests.integration.web.flows import Flow


async def test_public_client_connects_and_sees_what_was_granted(flow: Flow) -> None:
    await flow.register(GENERIC_TENANT, name="generic")
    link = await flow.link("user-7", tenant="generic")
    async with ScriptedPatient(username="nancysmart") as patient:
        page = await patient.connect(link)
        cookies = {cookie.key: cookie for cookie in patient.http.cookie_jar}
    assert page.status == 200, page.body
    assert page.url.startswith(flow.service.callback)
    assert "Your record is connected" in page.body
    assert "Nancy Smart" in page.body
    assert "Generic SMART Sandbox" in page.body
    browser = cookies["syncsvc_browser"]
    assert browser["httponly"]
    assert browser["samesite"] == "Lax"
    assert not browser["secure"]  # http public URL; https turns it on
    [connection] = await flow.connections()
    assert connection.status == "active"
    assert connection.user_id == "user-7"
    assert connection.patient_id == "12724066"
    assert connection.fhir_base == flow.sandbox.urls(GENERIC_TENANT).fhir_base
    assert connection.token_endpoint == flow.sandbox.urls(GENERIC_TENANT).token
    assert "patient/Observation.read" in connection.requested_scopes or (
        "patient/Observation.rs" in connection.requested_scopes
    )
    assert connection.next_sync_at is not None
    async with flow.service.app[SERVICES].sessionmaker() as session:
        tokens = await load_tokens(session, flow.service.vault, connection.id)
    assert tokens is not None
    assert tokens.refresh_token
    assert connection.next_refresh_at is not None


async def test_confidential_client_secret_basic_against_cerner(flow: Flow) -> None:
    await flow.register(CERNER_TENANT, name="cerner", auth="client_secret_basic")
    link = await flow.link("user-1", tenant="cerner")
    async with ScriptedPatient(username="wilmasmart") as patient:
        page = await patient.connect(link)
    assert page.status == 200, page.body
    [connection] = await flow.connections()
    assert connection.patient_id == "12742400"
    assert connection.client_id == "syncsvc-confidential"
    # Cerner does not support patient/*.read: syncsvc asked for each type explicitly.
    assert not [s for s in connection.requested_scopes if "*" in s]
    # The sandbox advertises permission-v2, so the scopes are v2 (`.rs`).
    assert {"patient/Patient.rs", "patient/Observation.rs"} <= set(connection.requested_scopes)
    assert "offline_access" in connection.requested_scopes
    token_calls = [
        entry
        for entry in flow.sandbox.state.request_log
        if entry.url.endswith("/token") and entry.method == "POST"
    ]
    assert token_calls, "the code was exchanged at the tenant's token endpoint"


async def test_private_key_jwt_client_with_served_jwks(flow: Flow, pkjwt_private_key: str) -> None:
    await flow.register(
        EPIC_TENANT, name="epic", auth="private_key_jwt", private_key=pkjwt_private_key
    )
    async with flow.http.get(f"{flow.service.origin}/.well-known/jwks.json") as response:
        assert response.status == 200
        jwks = await response.json()
    [key] = jwks["keys"]
    assert key["kid"] == "syncsvc-test-key"
    assert key["alg"] == "RS384"
    assert "d" not in key  # the public half only
    link = await flow.link("user-2", tenant="epic")
    async with ScriptedPatient(username="timmysmart") as patient:
        page = await patient.connect(link)
    assert page.status == 200, page.body
    [connection] = await flow.connections()
    assert connection.patient_id == "12457977"
    assert connection.status == "active"


async def test_link_without_tenant_lists_every_provider(flow: Flow) -> None:
    await flow.register(GENERIC_TENANT, name="generic")
    await flow.register(EPIC_TENANT, name="epic")
    link = await flow.link("user-3")
    async with ScriptedPatient(username="nancysmart") as patient:
        page = await patient.open(link)
        # A directory of a page or less is listed whole, beneath the search form.
        forms = parse_forms(page.body)
        assert any("q" in form.fields and form.method == "get" for form in forms)
        choices = [form.fields["tenant"] for form in forms if "tenant" in form.fields]
        assert sorted(choices) == ["epic", "generic"]
        # Opening the link again (a mail scanner's prefetch, a reload) does not use it up.
        again = await patient.open(link)
        assert again.status == 200
        done = await patient.connect(link, provider="epic")
    assert done.status == 200, done.body
    [connection] = await flow.connections()
    assert connection.fhir_base == flow.sandbox.urls(EPIC_TENANT).fhir_base


async def test_launch_attempt_stores_state_hashed_and_verifier_encrypted(flow: Flow) -> None:
    await flow.register(GENERIC_TENANT, name="generic")
    link = await flow.link(tenant="generic")
    async with ScriptedPatient(username="nancysmart") as patient:
        stopped = await patient.connect(
            link, stop_before=flow.sandbox.urls(GENERIC_TENANT).authorize
        )
    authorize = aiohttp.helpers.URL(stopped.url)
    state = authorize.query["state"]
    assert len(state) >= 43  # 256 bits, base64url
    assert authorize.query["aud"] == flow.sandbox.urls(GENERIC_TENANT).fhir_base
    assert authorize.query["code_challenge_method"] == "S256"
    assert authorize.query["nonce"]
    async with flow.service.app[SERVICES].sessionmaker() as session:
        [attempt] = list(await session.scalars(select(LaunchAttempt)))
    assert attempt.state_hash != state
    assert len(attempt.state_hash) == 64
    assert attempt.code_verifier_enc.startswith("v1.")
    async with flow.service.app[SERVICES].sessionmaker() as session:
        assert list(await session.scalars(select(Credential))) == []
