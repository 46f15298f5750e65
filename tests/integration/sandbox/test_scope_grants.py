"""Granted = requested ∩ registered ∩ policy, seen end to end through real HTTP.

Each test authorizes and exchanges a code like a client would, then uses the issued access token
on the FHIR server, so a scope that the token response claims is also the scope that is enforced.
"""

from __future__ import annotations

import aiohttp
import pytest
from multidict import CIMultiDict

from syncsvc.sandbox.config import ClientRegistration
from syncsvc.sandbox.server import RunningSandbox
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT, TEST_REDIRECT_URI

from .authflow import obtain_tokens
from .tokens import bearer

NANCY = "12724066"
BOTH_SYNTAXES = (
    "launch/patient patient/Observation.read patient/Condition.rs patient/Patient.read "
    "patient/Patient.rs"
)
INSUFFICIENT_SCOPE_BODY = (
    '{"code":403,"message":"code=\\"urn:cerner:error:oauth2:resource-access:'
    'insufficient-scopes\\", error=\\"insufficient_scope\\", '
    'subcode=\\"no_scope_for_resource_path\\""}'
)
TENANT_MISMATCH_BODY = (
    '{"code":401,"message":"code=\\"urn:cerner:error:oauth2:resource-access:tenant-mismatch\\", '
    'error=\\"invalid_token\\", error_description=\\"Token is not valid for this tenant\\""}'
)


@pytest.fixture(autouse=True)
def auto_approve(sandbox: RunningSandbox) -> None:
    """Every tenant approves Nancy without a login page."""
    for tenant in sandbox.state.config.tenants:
        tenant.policy.auto_approve_patient = NANCY


async def _status(
    http: aiohttp.ClientSession, url: str, token: str
) -> tuple[int, str, CIMultiDict[str]]:
    async with http.get(url, headers=bearer(token)) as response:
        return response.status, await response.text(), response.headers.copy()


def _search(sandbox: RunningSandbox, tenant_id: str, resource_type: str) -> str:
    return f"{sandbox.urls(tenant_id).fhir_base}/{resource_type}?patient={NANCY}"


@pytest.mark.parametrize(
    ("syntax", "granted"),
    [
        ("v1", "launch/patient patient/Observation.read patient/Patient.read"),
        ("v2", "launch/patient patient/Condition.rs patient/Patient.rs"),
        ("both", BOTH_SYNTAXES),
    ],
)
async def test_scope_syntax_policy_trims_the_grant_and_the_token(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, syntax: str, granted: str
) -> None:
    sandbox.tenant(GENERIC_TENANT).policy.scope_syntax = syntax  # type: ignore[assignment]

    body = await obtain_tokens(http, sandbox, GENERIC_TENANT, scope=BOTH_SYNTAXES)

    assert body["scope"] == granted
    token = body["access_token"]
    observation, _, _ = await _status(http, _search(sandbox, GENERIC_TENANT, "Observation"), token)
    condition, _, _ = await _status(http, _search(sandbox, GENERIC_TENANT, "Condition"), token)
    assert observation == (200 if syntax != "v2" else 403)
    assert condition == (200 if syntax != "v1" else 403)


async def test_registered_scopes_limit_what_the_client_is_granted(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.state.config.clients.append(
        ClientRegistration(
            client_id="observations-only",
            redirect_uris=[TEST_REDIRECT_URI],
            scopes=["launch/patient", "offline_access", "patient/Observation.read"],
        )
    )

    body = await obtain_tokens(
        http,
        sandbox,
        GENERIC_TENANT,
        client_id="observations-only",
        scope="launch/patient offline_access patient/Observation.read patient/Condition.read",
    )

    assert body["scope"] == "launch/patient offline_access patient/Observation.read"
    assert body["refresh_token"]
    token = body["access_token"]
    assert (await _status(http, _search(sandbox, GENERIC_TENANT, "Observation"), token))[0] == 200
    assert (await _status(http, _search(sandbox, GENERIC_TENANT, "Condition"), token))[0] == 403


async def test_an_issued_token_is_enforced_as_granted_and_only_at_its_tenant(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    """Cerner drops the wildcard: the issued token reads Observations, not Conditions."""
    body = await obtain_tokens(
        http,
        sandbox,
        CERNER_TENANT,
        scope="launch/patient offline_access patient/*.read patient/Observation.read",
    )
    token = body["access_token"]
    assert body["scope"] == "launch/patient offline_access patient/Observation.read"

    observation, _, _ = await _status(http, _search(sandbox, CERNER_TENANT, "Observation"), token)
    condition, condition_body, _ = await _status(
        http, _search(sandbox, CERNER_TENANT, "Condition"), token
    )
    assert observation == 200
    assert (condition, condition_body) == (403, INSUFFICIENT_SCOPE_BODY)

    for other in (EPIC_TENANT, GENERIC_TENANT):
        status, text, headers = await _status(http, _search(sandbox, other, "Observation"), token)
        assert (status, text) == (401, TENANT_MISMATCH_BODY), other
        host = sandbox.tenant(other).host
        assert headers["WWW-Authenticate"] == (
            f'Bearer realm="{host}", error="invalid_token", '
            'error_description="Token is not valid for this tenant"'
        )
