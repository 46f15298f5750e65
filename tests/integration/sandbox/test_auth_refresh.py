"""Refresh-token behaviour per refresh mode and failure policy, over real HTTP."""

from __future__ import annotations

from urllib.parse import unquote

import aiohttp
import pytest

from syncsvc.sandbox.config import RefreshMode
from syncsvc.sandbox.server import RunningSandbox
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT

from .authflow import obtain_tokens, refresh

CONFIDENTIAL = {"client_id": "syncsvc-confidential", "client_secret": "sandbox-secret"}


@pytest.fixture(autouse=True)
def auto_approve(sandbox: RunningSandbox) -> None:
    """Every tenant approves patient 12724066 without a login page."""
    for tenant in sandbox.state.config.tenants:
        tenant.policy.auto_approve_patient = "12724066"


def _mode(sandbox: RunningSandbox, mode: RefreshMode, **policy: object) -> None:
    tenant_policy = sandbox.tenant(GENERIC_TENANT).policy
    tenant_policy.refresh_mode = mode
    for name, value in policy.items():
        setattr(tenant_policy, name, value)


async def test_cerner_keeps_the_same_refresh_token(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    tokens = await obtain_tokens(http, sandbox, CERNER_TENANT)
    original = tokens["refresh_token"]

    for _ in range(3):
        status, body, response = await refresh(http, sandbox, CERNER_TENANT, original)
        assert status == 200, body
        assert body["refresh_token"] == original
        sandbox.state.clock_offset += 61

    assert response.headers["Cache-Control"] == "no-store"
    assert body["access_token"] != tokens["access_token"]
    assert body["expires_in"] == 570
    assert body["scope"] == tokens["scope"]
    assert "id_token" not in body


async def test_refresh_scope_may_only_narrow(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    tokens = await obtain_tokens(http, sandbox, GENERIC_TENANT)
    token = tokens["refresh_token"]

    widened, error, _ = await refresh(
        http, sandbox, GENERIC_TENANT, token, scope="patient/Condition.read"
    )
    narrowed, body, _ = await refresh(
        http, sandbox, GENERIC_TENANT, token, scope="patient/Observation.read offline_access"
    )

    assert widened == 400
    assert error["error"] == "invalid_scope"
    assert narrowed == 200
    assert body["scope"] == "offline_access patient/Observation.read"
    # Narrowing one access token does not shrink the grant.
    _, again, _ = await refresh(http, sandbox, GENERIC_TENANT, token)
    assert again["scope"] == tokens["scope"]


async def test_rolling_rotates_but_keeps_the_absolute_expiry(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    _mode(sandbox, "rolling", refresh_absolute_lifetime=1000)
    first = (await obtain_tokens(http, sandbox, GENERIC_TENANT))["refresh_token"]

    status, body, _ = await refresh(http, sandbox, GENERIC_TENANT, first)
    second = body["refresh_token"]
    old, old_body, _ = await refresh(http, sandbox, GENERIC_TENANT, first)
    sandbox.state.clock_offset += 999
    still, body, _ = await refresh(http, sandbox, GENERIC_TENANT, second)
    sandbox.state.clock_offset += 2
    expired, expired_body, _ = await refresh(http, sandbox, GENERIC_TENANT, body["refresh_token"])

    assert status == still == 200
    assert second != first
    assert old == 400
    assert old_body["error"] == "invalid_grant"
    assert not next(iter(sandbox.state.grants.values())).revoked
    assert expired == 400
    assert expired_body["error"] == "invalid_grant"
    assert "expired" in expired_body["error_description"]


async def test_indefinite_extends_the_expiry(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    _mode(sandbox, "indefinite", refresh_absolute_lifetime=1000)
    token = (await obtain_tokens(http, sandbox, GENERIC_TENANT))["refresh_token"]

    for _ in range(3):
        sandbox.state.clock_offset += 900
        status, body, _ = await refresh(http, sandbox, GENERIC_TENANT, token)
        assert status == 200, body
        assert body["refresh_token"] != token
        token = body["refresh_token"]


async def test_strict_rotation_reuse_revokes_the_grant(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    _mode(sandbox, "strict_rotation")
    tokens = await obtain_tokens(http, sandbox, GENERIC_TENANT)
    first = tokens["refresh_token"]
    _, body, _ = await refresh(http, sandbox, GENERIC_TENANT, first)
    second = body["refresh_token"]

    reuse, reuse_body, _ = await refresh(http, sandbox, GENERIC_TENANT, first)
    after, after_body, _ = await refresh(http, sandbox, GENERIC_TENANT, second)

    assert reuse == after == 400
    assert reuse_body["error"] == after_body["error"] == "invalid_grant"
    grant = next(iter(sandbox.state.grants.values()))
    assert grant.revoked
    assert grant.revoked_reason == "refresh token reuse"


async def test_revoked_grant_cannot_refresh(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    token = (await obtain_tokens(http, sandbox, CERNER_TENANT))["refresh_token"]
    next(iter(sandbox.state.grants.values())).revoked = True

    status, body, _ = await refresh(http, sandbox, CERNER_TENANT, token)

    assert status == 400
    assert body["error"] == "invalid_grant"
    assert "invalid-grant" in unquote(body["error_uri"])


async def test_idle_grant_is_revoked(sandbox: RunningSandbox, http: aiohttp.ClientSession) -> None:
    token = (await obtain_tokens(http, sandbox, CERNER_TENANT))["refresh_token"]
    idle_limit = sandbox.tenant(CERNER_TENANT).policy.refresh_idle_limit
    assert idle_limit is not None
    sandbox.state.clock_offset += idle_limit - 10
    ok, _, _ = await refresh(http, sandbox, CERNER_TENANT, token)
    sandbox.state.clock_offset += idle_limit + 1

    status, body, _ = await refresh(http, sandbox, CERNER_TENANT, token)

    assert ok == 200
    assert status == 400
    assert body["error"] == "invalid_grant"
    assert next(iter(sandbox.state.grants.values())).revoked_reason == "idle"


async def test_refreshing_too_often_is_throttled(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    token = (await obtain_tokens(http, sandbox, CERNER_TENANT))["refresh_token"]
    first, _, _ = await refresh(http, sandbox, CERNER_TENANT, token)
    sandbox.state.clock_offset += 20

    status, body, response = await refresh(http, sandbox, CERNER_TENANT, token)
    sandbox.state.clock_offset += 41
    later, _, _ = await refresh(http, sandbox, CERNER_TENANT, token)

    assert first == later == 200
    assert status == 429
    assert 39 <= int(response.headers["Retry-After"]) <= 41
    assert body["error"] == "temporarily_unavailable"
    assert "oauth2:token:throttled" in unquote(body["error_uri"])


async def test_withdrawn_scopes_give_empty_scopes(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    token = (await obtain_tokens(http, sandbox, CERNER_TENANT))["refresh_token"]
    sandbox.tenant(CERNER_TENANT).policy.trim_to = ["online_access"]

    status, body, _ = await refresh(http, sandbox, CERNER_TENANT, token)

    assert status == 400
    assert body["error"] == "invalid_scope"
    assert "oauth2:token:empty-scopes" in unquote(body["error_uri"])


async def test_partly_withdrawn_scopes_shrink_the_grant(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    token = (await obtain_tokens(http, sandbox, GENERIC_TENANT))["refresh_token"]
    sandbox.tenant(GENERIC_TENANT).policy.missing_scopes = ["patient/Observation.read"]

    status, body, _ = await refresh(http, sandbox, GENERIC_TENANT, token)

    assert status == 200
    assert "patient/Observation.read" not in body["scope"].split()
    assert "patient/Patient.read" in body["scope"].split()


async def test_refresh_token_of_another_client_or_tenant_is_refused(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    token = (await obtain_tokens(http, sandbox, EPIC_TENANT, **CONFIDENTIAL))["refresh_token"]

    other_client, body, _ = await refresh(http, sandbox, EPIC_TENANT, token)
    other_tenant, _, _ = await refresh(http, sandbox, GENERIC_TENANT, token, **CONFIDENTIAL)
    own, _, _ = await refresh(http, sandbox, EPIC_TENANT, token, **CONFIDENTIAL)

    assert (other_client, other_tenant, own) == (400, 400, 200)
    assert body["error"] == "invalid_grant"
