"""OAuth mix-up (RFC 9207): a hostile tenant never receives an honest EHR's code.

The hostile sandbox tenant's authorize endpoint forwards the patient's browser to the honest
(generic) tenant with syncsvc's own ``state``, ``code_challenge``, ``nonce`` and client id, as a
hostile server listed among thousands of imported endpoints could. The patient signs in at the
honest EHR, which sends its code back to syncsvc. Before the defence, syncsvc sent that code and
the PKCE verifier to the hostile tenant's token endpoint; now the answer is refused before any
token request is made.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
from sqlalchemy import select

from syncsvc.db.models.connections import LaunchAttempt
from syncsvc.sandbox.config import SandboxConfig, TenantConfig, vendor_policy
from syncsvc.sandbox.patient import PageResult, ScriptedPatient
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.web.keys import SERVICES
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.web.flows import Flow

HOSTILE_TENANT = "hostile"


def _hostile(sandbox_config: SandboxConfig, forward_redirect_uri: str) -> None:
    """Add the hostile tenant: its authorize forwards to the generic (honest) tenant."""
    honest = next(t for t in sandbox_config.tenants if t.id == GENERIC_TENANT)
    sandbox_config.tenants.append(
        TenantConfig(
            id=HOSTILE_TENANT,
            name="Hostile Clinic",
            vendor="generic",
            policy=vendor_policy(
                "generic",
                forward_authorize_to=GENERIC_TENANT,
                forward_client_id="syncsvc-public",
                forward_redirect_uri=forward_redirect_uri,
            ),
            patients=honest.patients,
        )
    )


def _token_requests(sandbox: RunningSandbox, tenant_id: str) -> list[str]:
    token = sandbox.urls(tenant_id).token
    return [e.url for e in sandbox.state.request_log if e.url.startswith(token)]


async def _attempt_outcomes(flow: Flow) -> list[str]:
    async with flow.service.app[SERVICES].sessionmaker() as session:
        return sorted(str(a.outcome) for a in await session.scalars(select(LaunchAttempt)))


async def _attack(flow: Flow) -> tuple[PageResult, list[str]]:
    """The patient connects at the hostile tenant and signs in where it sends them."""
    link = await flow.link(tenant="hostile")
    async with ScriptedPatient(username="nancysmart") as patient:
        page = await patient.connect(link)
    return page, patient.visited


def _assert_attack_ran_and_failed(
    flow: Flow, page: PageResult, visited: list[str], honest_callback: str
) -> None:
    sandbox = flow.sandbox
    # The attack really happened: the browser went through the hostile authorize endpoint to the
    # honest one, and the honest EHR issued a code and sent it to syncsvc.
    assert any(u.startswith(sandbox.urls(HOSTILE_TENANT).authorize) for u in visited)
    assert any(u.startswith(sandbox.urls(GENERIC_TENANT).authorize) for u in visited)
    answers = [u for u in visited if u.startswith(f"{honest_callback}?")]
    assert answers, visited
    [code] = [v for k, v in parse_qsl(urlsplit(answers[-1]).query) if k == "code"]
    assert sandbox.state.codes[code].tenant_id == GENERIC_TENANT
    # ... and failed: nothing was connected, the code went to no token endpoint at all.
    assert page.status == 400
    assert "Nothing was connected" in page.body
    assert _token_requests(sandbox, HOSTILE_TENANT) == []
    assert _token_requests(sandbox, GENERIC_TENANT) == []
    assert sandbox.state.codes[code].used is False


@pytest.fixture
def per_tenant_sandbox(sandbox_config: SandboxConfig, service_origin: str) -> SandboxConfig:
    """The hostile tenant sends the browser to the honest EHR's own per-tenant redirect URI."""
    _hostile(sandbox_config, f"{service_origin}/callback/generic")
    return sandbox_config


async def test_hostile_tenant_never_gets_the_honest_code_per_tenant_callback(
    per_tenant_sandbox: SandboxConfig, flow: Flow
) -> None:
    await flow.register(GENERIC_TENANT, name="generic")
    await flow.register(HOSTILE_TENANT, name="hostile")
    page, visited = await _attack(flow)
    _assert_attack_ran_and_failed(flow, page, visited, flow.service.callback_for("generic"))
    assert "callback_mismatch" in page.body
    assert await _attempt_outcomes(flow) == ["callback_mismatch"]
    assert await flow.connections() == []


@pytest.fixture
def shared_callback_sandbox(sandbox_config: SandboxConfig, service_origin: str) -> SandboxConfig:
    """Both tenants still on the shared ``/callback`` of earlier releases."""
    _hostile(sandbox_config, f"{service_origin}/callback")
    return sandbox_config


async def test_hostile_tenant_never_gets_the_honest_code_shared_callback(
    shared_callback_sandbox: SandboxConfig, flow: Flow
) -> None:
    # The honest EHR names itself (iss) in its answer; that is what betrays the forwarding here.
    shared = flow.service.callback
    await flow.register(GENERIC_TENANT, name="generic", redirect_uri=shared)
    await flow.register(HOSTILE_TENANT, name="hostile", redirect_uri=shared)
    page, visited = await _attack(flow)
    _assert_attack_ran_and_failed(flow, page, visited, shared)
    assert "iss_mismatch" in page.body
    assert await _attempt_outcomes(flow) == ["iss_mismatch"]


async def test_shared_callback_keeps_working_for_a_tenant_registered_with_it(flow: Flow) -> None:
    await flow.register(GENERIC_TENANT, name="generic", redirect_uri=flow.service.callback)
    visited: list[str] = []
    page = await flow.connect("nancysmart", tenant="generic", visited=visited)
    assert page.status == 200
    assert any(u.startswith(f"{flow.service.callback}?") for u in visited)
    assert (await flow.only_connection()).status == "active"


async def test_answer_at_another_tenants_callback_is_refused(flow: Flow) -> None:
    # Both honest, each with its own callback: an answer for a generic launch that arrives at the
    # cerner callback (or the shared one) is not used.
    await flow.register(GENERIC_TENANT, name="generic")
    for wrong in (flow.service.callback_for("cerner"), flow.service.callback):
        link = await flow.link(tenant="generic")
        async with ScriptedPatient(username="nancysmart") as patient:
            stopped = await patient.connect(link, stop_before=flow.service.callback_for("generic"))
            query = urlsplit(stopped.url).query
            page = await patient.open(f"{wrong}?{query}")
        assert page.status == 400
        assert "callback_mismatch" in page.body
    assert _token_requests(flow.sandbox, GENERIC_TENANT) == []
    assert await flow.connections() == []


def _with_query(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    for name, value in changes.items():
        if value is None:
            query.pop(name, None)
        else:
            query[name] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


async def test_bogus_or_missing_iss_is_refused(flow: Flow) -> None:
    await flow.register(GENERIC_TENANT, name="generic")
    callback = flow.service.callback_for("generic")
    pages = []
    for iss in ("https://issuer.invalid/other", None):
        link = await flow.link(tenant="generic")
        async with ScriptedPatient(username="nancysmart") as patient:
            stopped = await patient.connect(link, stop_before=callback)
            assert "iss=" in stopped.url  # the generic tenant sends it
            pages.append(await patient.open(_with_query(stopped.url, iss=iss)))
    bogus, missing = pages
    assert bogus.status == 400
    assert "iss_mismatch" in bogus.body
    # The generic tenant's discovery advertises the parameter, so an answer without it is refused.
    assert missing.status == 400
    assert "iss_missing" in missing.body
    assert _token_requests(flow.sandbox, GENERIC_TENANT) == []
    assert await _attempt_outcomes(flow) == ["iss_mismatch", "iss_missing"]
    assert await flow.connections() == []


async def test_matching_iss_connects(flow: Flow) -> None:
    tenant = await flow.register(GENERIC_TENANT, name="generic")
    visited: list[str] = []
    page = await flow.connect("nancysmart", tenant="generic", visited=visited)
    assert page.status == 200
    [answer] = [u for u in visited if u.startswith(f"{flow.service.callback_for('generic')}?")]
    assert dict(parse_qsl(urlsplit(answer).query))["iss"] == tenant.issuer
    assert len(_token_requests(flow.sandbox, GENERIC_TENANT)) == 1
