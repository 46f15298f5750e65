"""Token revocation (RFC 7009) and introspection (RFC 7662) over real HTTP."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from syncsvc.sandbox.server import RunningSandbox
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT

from .authflow import basic_auth, obtain_tokens, refresh, token_request

PUBLIC = {"client_id": "syncsvc-public"}


@pytest.fixture(autouse=True)
def auto_approve(sandbox: RunningSandbox) -> None:
    """Every tenant approves patient 12724066 without a login page."""
    for tenant in sandbox.state.config.tenants:
        tenant.policy.auto_approve_patient = "12724066"


async def _introspect(
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    tenant_id: str,
    token: str,
    *,
    auth: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    form = {"token": token, **(PUBLIC if auth is None else auth)}
    status, body, _ = await token_request(http, sandbox.urls(tenant_id).introspect, form, headers)
    return status, body


async def _revoke(
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    tenant_id: str,
    token: str,
    hint: str | None = None,
) -> int:
    form = {"token": token, **PUBLIC}
    if hint:
        form["token_type_hint"] = hint
    status, _, _ = await token_request(http, sandbox.urls(tenant_id).revoke, form)
    return status


async def test_introspect_an_active_access_token(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    tokens = await obtain_tokens(http, sandbox, CERNER_TENANT)

    status, body = await _introspect(http, sandbox, CERNER_TENANT, tokens["access_token"])

    assert status == 200
    assert body["active"] is True
    assert body["token_type"] == "Bearer"
    assert body["scope"] == tokens["scope"]
    assert body["client_id"] == "syncsvc-public"
    assert body["patient"] == "12724066"
    assert body["fhirUser"] == f"{sandbox.urls(CERNER_TENANT).fhir_base}/Patient/12724066"
    assert body["exp"] > body["iat"]


async def test_introspect_a_refresh_token(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    tokens = await obtain_tokens(http, sandbox, GENERIC_TENANT)

    status, body = await _introspect(http, sandbox, GENERIC_TENANT, tokens["refresh_token"])

    assert status == 200
    assert body["active"] is True
    assert body["token_type"] == "refresh_token"
    assert body["patient"] == "12724066"


async def test_introspect_inactive_tokens(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    tokens = await obtain_tokens(http, sandbox, GENERIC_TENANT)
    other_tenant = await obtain_tokens(http, sandbox, CERNER_TENANT)

    garbage = await _introspect(http, sandbox, GENERIC_TENANT, "not-a-token")
    foreign = await _introspect(http, sandbox, GENERIC_TENANT, other_tenant["access_token"])
    sandbox.state.clock_offset += 3601
    expired = await _introspect(http, sandbox, GENERIC_TENANT, tokens["access_token"])

    assert garbage == foreign == expired == (200, {"active": False})


async def test_confidential_introspection_requires_client_auth(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    tokens = await obtain_tokens(
        http, sandbox, EPIC_TENANT, client_id="syncsvc-confidential", client_secret="sandbox-secret"
    )
    token = tokens["access_token"]

    unauthenticated = await _introspect(
        http, sandbox, EPIC_TENANT, token, auth={"client_id": "syncsvc-confidential"}
    )
    nobody = await _introspect(http, sandbox, EPIC_TENANT, token, auth={})
    authenticated = await _introspect(
        http,
        sandbox,
        EPIC_TENANT,
        token,
        auth={},
        headers=basic_auth("syncsvc-confidential", "sandbox-secret"),
    )

    assert unauthenticated[0] == nobody[0] == 401
    assert unauthenticated[1]["error"] == "invalid_client"
    assert authenticated[0] == 200
    assert authenticated[1]["active"] is True


async def test_revoking_the_refresh_token_revokes_the_grant(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    tokens = await obtain_tokens(http, sandbox, CERNER_TENANT)

    status = await _revoke(http, sandbox, CERNER_TENANT, tokens["refresh_token"], "refresh_token")

    assert status == 200
    refreshed, body, _ = await refresh(http, sandbox, CERNER_TENANT, tokens["refresh_token"])
    assert refreshed == 400
    assert body["error"] == "invalid_grant"
    # The grant's access tokens die with it.
    assert await _introspect(http, sandbox, CERNER_TENANT, tokens["access_token"]) == (
        200,
        {"active": False},
    )
    assert next(iter(sandbox.state.grants.values())).revoked


async def test_revoking_an_access_token_leaves_the_grant(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    tokens = await obtain_tokens(http, sandbox, GENERIC_TENANT)

    status = await _revoke(http, sandbox, GENERIC_TENANT, tokens["access_token"])

    assert status == 200
    _, body = await _introspect(http, sandbox, GENERIC_TENANT, tokens["access_token"])
    assert body == {"active": False}
    refreshed, _, _ = await refresh(http, sandbox, GENERIC_TENANT, tokens["refresh_token"])
    assert refreshed == 200


async def test_revocation_answers_200_for_unknown_tokens(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    assert await _revoke(http, sandbox, GENERIC_TENANT, "unknown", "access_token") == 200


async def test_another_client_cannot_revoke_a_grant(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    tokens = await obtain_tokens(http, sandbox, GENERIC_TENANT)
    form = {"token": tokens["refresh_token"]}

    status, _, _ = await token_request(
        http,
        sandbox.urls(GENERIC_TENANT).revoke,
        form,
        basic_auth("syncsvc-confidential", "sandbox-secret"),
    )

    assert status == 200
    assert not next(iter(sandbox.state.grants.values())).revoked


async def test_revocation_requires_a_token_and_valid_client(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    url = sandbox.urls(GENERIC_TENANT).revoke

    missing, body, _ = await token_request(http, url, PUBLIC)
    bad_client, _, _ = await token_request(http, url, {"token": "x", "client_id": "nobody"})

    assert missing == 400
    assert body["error"] == "invalid_request"
    assert bad_client == 401
