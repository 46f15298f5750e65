"""The sandbox's token endpoint over real HTTP: code exchange, token contents, errors and faults."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import unquote

import aiohttp
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from syncsvc.sandbox.config import ClientRegistration, FaultSpec
from syncsvc.sandbox.server import RunningSandbox
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT, TEST_REDIRECT_URI

from .authflow import (
    DEFAULT_SCOPE,
    authorize,
    authorize_params,
    basic_auth,
    exchange_code,
    new_pkce,
    obtain_code,
    obtain_tokens,
    token_request,
)

EMPTY_SCOPES_URN = "urn:cerner:error:authorization-server:oauth2:token:empty-scopes"


async def _claims(
    http: aiohttp.ClientSession, sandbox: RunningSandbox, tenant_id: str, token: str
) -> dict[str, Any]:
    """Verify ``token`` with the tenant's published JWKS, as a relying party would."""
    async with http.get(sandbox.urls(tenant_id).jwks) as response:
        keys = KeySet.import_key_set(await response.json())
    return dict(jwt.decode(token, keys, algorithms=["RS256"]).claims)


@pytest.fixture
def auto_approve(sandbox: RunningSandbox) -> None:
    """Every tenant approves patient 12724066 without a login page."""
    for tenant in sandbox.state.config.tenants:
        tenant.policy.auto_approve_patient = "12724066"


@pytest.mark.usefixtures("auto_approve")
async def test_cerner_token_response(sandbox: RunningSandbox, http: aiohttp.ClientSession) -> None:
    pkce = new_pkce()
    params = authorize_params(sandbox, CERNER_TENANT, pkce=pkce)
    code = await obtain_code(http, sandbox, CERNER_TENANT, params)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": TEST_REDIRECT_URI,
        "code_verifier": pkce.verifier,
        "client_id": "syncsvc-public",
    }

    status, body, response = await token_request(http, sandbox.urls(CERNER_TENANT).token, form)

    assert status == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 570
    assert body["scope"] == DEFAULT_SCOPE  # Cerner grants all of these; nothing hidden
    assert body["patient"] == "12724066"
    assert body["tenant"] == CERNER_TENANT
    assert body["need_patient_banner"] is True
    assert body["refresh_token"]
    assert body["id_token"]


@pytest.mark.usefixtures("auto_approve")
async def test_access_token_claims_contract(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    before = int(time.time())
    body = await obtain_tokens(http, sandbox, CERNER_TENANT)

    claims = await _claims(http, sandbox, CERNER_TENANT, body["access_token"])

    urls = sandbox.urls(CERNER_TENANT)
    tenant = sandbox.tenant(CERNER_TENANT)
    assert claims["iss"] == urls.issuer
    assert claims["aud"] == urls.fhir_base
    assert claims["sub"] == claims["patient"] == "12724066"
    assert claims["tenant"] == CERNER_TENANT
    assert claims["host"] == tenant.host
    assert claims["client_id"] == "syncsvc-public"
    assert claims["scope"] == body["scope"]
    assert before <= claims["iat"] <= int(time.time()) + 1
    assert claims["exp"] == claims["iat"] + 570
    assert sandbox.state.grants[claims["gid"]].patient_id == "12724066"
    assert claims["urn:cerner:authorization:claims:version:1"] == {
        "ver": "1.0",
        "tnt": CERNER_TENANT,
        "azs": body["scope"],
        "user": {"principal": "12724066", "principalType": "PATIENT"},
        "ctx": {"patient": "12724066"},
    }


@pytest.mark.usefixtures("auto_approve")
async def test_access_tokens_have_unique_ids(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    first = await obtain_tokens(http, sandbox, GENERIC_TENANT)
    second = await obtain_tokens(http, sandbox, GENERIC_TENANT)

    one = await _claims(http, sandbox, GENERIC_TENANT, first["access_token"])
    two = await _claims(http, sandbox, GENERIC_TENANT, second["access_token"])

    assert one["jti"] != two["jti"]
    assert one["gid"] != two["gid"]
    assert "urn:cerner:authorization:claims:version:1" not in one


@pytest.mark.usefixtures("auto_approve")
async def test_epic_token_response(sandbox: RunningSandbox, http: aiohttp.ClientSession) -> None:
    body = await obtain_tokens(
        http, sandbox, EPIC_TENANT, client_id="syncsvc-confidential", client_secret="sandbox-secret"
    )

    assert body["expires_in"] == 3600
    assert "tenant" not in body
    # Epic issues a refresh token but leaves offline_access out of the scope string.
    assert body["refresh_token"]
    assert "offline_access" not in body["scope"].split()
    claims = await _claims(http, sandbox, EPIC_TENANT, body["access_token"])
    assert "offline_access" in claims["scope"].split()


@pytest.mark.usefixtures("auto_approve")
async def test_epic_public_client_gets_no_offline_access(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    body = await obtain_tokens(http, sandbox, EPIC_TENANT)

    assert "refresh_token" not in body
    claims = await _claims(http, sandbox, EPIC_TENANT, body["access_token"])
    assert "offline_access" not in claims["scope"].split()


@pytest.mark.usefixtures("auto_approve")
async def test_online_access_also_gets_a_refresh_token(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    body = await obtain_tokens(
        http, sandbox, GENERIC_TENANT, scope="launch/patient online_access patient/Patient.read"
    )

    assert body["refresh_token"]
    assert "id_token" not in body


@pytest.mark.usefixtures("auto_approve")
async def test_no_refresh_token_without_offline_or_online_access(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    body = await obtain_tokens(
        http, sandbox, GENERIC_TENANT, scope="launch/patient patient/Patient.read"
    )

    assert "refresh_token" not in body


@pytest.mark.usefixtures("auto_approve")
async def test_id_token(sandbox: RunningSandbox, http: aiohttp.ClientSession) -> None:
    body = await obtain_tokens(http, sandbox, CERNER_TENANT, nonce="n-0S6")

    claims = await _claims(http, sandbox, CERNER_TENANT, body["id_token"])

    urls = sandbox.urls(CERNER_TENANT)
    assert claims["iss"] == urls.issuer
    assert claims["aud"] == "syncsvc-public"
    assert claims["sub"] == "12724066"
    assert claims["fhirUser"] == f"{urls.fhir_base}/Patient/12724066"
    assert claims["nonce"] == "n-0S6"
    assert claims["exp"] > claims["iat"]


@pytest.mark.usefixtures("auto_approve")
async def test_id_token_without_fhir_user_scope_has_no_fhir_user(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    body = await obtain_tokens(
        http, sandbox, GENERIC_TENANT, scope="launch/patient openid patient/Patient.read"
    )

    claims = await _claims(http, sandbox, GENERIC_TENANT, body["id_token"])

    assert "fhirUser" not in claims
    assert "nonce" not in claims


@pytest.mark.usefixtures("auto_approve")
async def test_wildcard_scope_dropped_at_cerner(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    body = await obtain_tokens(
        http, sandbox, CERNER_TENANT, scope="launch/patient patient/*.read patient/Patient.read"
    )

    assert body["scope"] == "launch/patient patient/Patient.read"


@pytest.mark.usefixtures("auto_approve")
async def test_trim_to_and_missing_scopes(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    policy = sandbox.tenant(GENERIC_TENANT).policy
    policy.trim_to = [
        "openid",
        "fhirUser",
        "launch",
        "launch/patient",
        "online_access",
        "patient/Observation.read",
    ]
    policy.missing_scopes = ["patient/Observation.read"]

    body = await obtain_tokens(http, sandbox, GENERIC_TENANT)

    assert body["scope"] == "launch/patient openid fhirUser"
    assert "refresh_token" not in body


@pytest.mark.usefixtures("auto_approve")
async def test_empty_grant_is_invalid_scope_empty_scopes(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.tenant(CERNER_TENANT).policy.trim_to = ["openid"]
    pkce = new_pkce()
    params = authorize_params(
        sandbox, CERNER_TENANT, scope="launch/patient patient/Patient.read", pkce=pkce
    )
    code = await obtain_code(http, sandbox, CERNER_TENANT, params)

    status, body = await exchange_code(http, sandbox, CERNER_TENANT, code, verifier=pkce.verifier)

    assert status == 400
    assert body["error"] == "invalid_scope"
    assert EMPTY_SCOPES_URN in unquote(body["error_uri"])
    assert "client=syncsvc-public" in body["error_uri"]


@pytest.mark.usefixtures("auto_approve")
async def test_code_is_single_use_and_a_replay_revokes_the_grant(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    pkce = new_pkce()
    params = authorize_params(sandbox, GENERIC_TENANT, pkce=pkce)
    code = await obtain_code(http, sandbox, GENERIC_TENANT, params)
    status, first = await exchange_code(http, sandbox, GENERIC_TENANT, code, verifier=pkce.verifier)
    assert status == 200
    gid = (await _claims(http, sandbox, GENERIC_TENANT, first["access_token"]))["gid"]
    assert not sandbox.state.grants[gid].revoked

    status, second = await exchange_code(
        http, sandbox, GENERIC_TENANT, code, verifier=pkce.verifier
    )

    assert status == 400
    assert second["error"] == "invalid_grant"
    assert "error_uri" not in second  # only the cerner profile adds Cerner URNs
    assert sandbox.state.grants[gid].revoked


@pytest.mark.usefixtures("auto_approve")
async def test_code_expires_after_a_minute(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    pkce = new_pkce()
    code = await obtain_code(
        http, sandbox, GENERIC_TENANT, authorize_params(sandbox, GENERIC_TENANT, pkce=pkce)
    )
    sandbox.state.clock_offset += 61

    status, body = await exchange_code(http, sandbox, GENERIC_TENANT, code, verifier=pkce.verifier)

    assert status == 400
    assert body["error"] == "invalid_grant"
    assert "expired" in body["error_description"]


@pytest.mark.usefixtures("auto_approve")
@pytest.mark.parametrize("verifier", [None, "wrong-verifier-" + "x" * 40])
async def test_pkce_verifier_is_checked(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, verifier: str | None
) -> None:
    pkce = new_pkce()
    code = await obtain_code(
        http, sandbox, CERNER_TENANT, authorize_params(sandbox, CERNER_TENANT, pkce=pkce)
    )

    status, body = await exchange_code(http, sandbox, CERNER_TENANT, code, verifier=verifier)

    assert status == 400
    assert body["error"] == "invalid_grant"
    assert "code_verifier" in body["error_description"]
    assert "invalid-grant" in unquote(body["error_uri"])


@pytest.mark.usefixtures("auto_approve")
async def test_epic_accepts_a_code_without_pkce(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    code = await obtain_code(http, sandbox, EPIC_TENANT, authorize_params(sandbox, EPIC_TENANT))

    status, body = await exchange_code(http, sandbox, EPIC_TENANT, code)

    assert status == 200, body


@pytest.mark.usefixtures("auto_approve")
async def test_redirect_uri_must_match_the_authorize_request(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    pkce = new_pkce()
    code = await obtain_code(
        http, sandbox, GENERIC_TENANT, authorize_params(sandbox, GENERIC_TENANT, pkce=pkce)
    )

    status, body = await exchange_code(
        http,
        sandbox,
        GENERIC_TENANT,
        code,
        verifier=pkce.verifier,
        redirect_uri=TEST_REDIRECT_URI + "/",
    )

    assert status == 400
    assert body["error"] == "invalid_grant"


@pytest.mark.usefixtures("auto_approve")
async def test_code_of_another_client_is_refused(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    pkce = new_pkce()
    code = await obtain_code(
        http, sandbox, GENERIC_TENANT, authorize_params(sandbox, GENERIC_TENANT, pkce=pkce)
    )

    status, body = await exchange_code(
        http,
        sandbox,
        GENERIC_TENANT,
        code,
        client_id="syncsvc-confidential",
        client_secret="sandbox-secret",
        verifier=pkce.verifier,
    )

    assert status == 400
    assert body["error"] == "invalid_grant"


@pytest.mark.usefixtures("auto_approve")
async def test_code_of_another_tenant_is_refused(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    pkce = new_pkce()
    code = await obtain_code(
        http, sandbox, GENERIC_TENANT, authorize_params(sandbox, GENERIC_TENANT, pkce=pkce)
    )

    status, body = await exchange_code(http, sandbox, CERNER_TENANT, code, verifier=pkce.verifier)

    assert status == 400
    assert body["error"] == "invalid_grant"


async def _code_for(
    http: aiohttp.ClientSession, sandbox: RunningSandbox, client_id: str
) -> tuple[str, str]:
    pkce = new_pkce()
    params = authorize_params(sandbox, GENERIC_TENANT, client_id=client_id, pkce=pkce)
    result = await authorize(http, sandbox, GENERIC_TENANT, params)
    return result.code, pkce.verifier


def _exchange_form(code: str, verifier: str) -> dict[str, str]:
    return {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": TEST_REDIRECT_URI,
        "code_verifier": verifier,
    }


@pytest.mark.usefixtures("auto_approve")
@pytest.mark.parametrize(
    ("extra_form", "headers"),
    [
        ({}, basic_auth("syncsvc-confidential", "wrong")),
        ({"client_id": "syncsvc-confidential"}, {}),
        ({"client_id": "syncsvc-confidential", "client_secret": "sandbox-secret"}, {}),
    ],
    ids=["wrong-secret", "no-secret", "post-instead-of-basic"],
)
async def test_client_secret_basic_is_enforced(
    sandbox: RunningSandbox,
    http: aiohttp.ClientSession,
    extra_form: dict[str, str],
    headers: dict[str, str],
) -> None:
    code, verifier = await _code_for(http, sandbox, "syncsvc-confidential")
    url = sandbox.urls(GENERIC_TENANT).token

    status, body, _ = await token_request(
        http, url, _exchange_form(code, verifier) | extra_form, headers
    )

    assert status == 401
    assert body["error"] == "invalid_client"


@pytest.mark.usefixtures("auto_approve")
async def test_wrong_basic_secret_gets_a_basic_challenge(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    code, verifier = await _code_for(http, sandbox, "syncsvc-confidential")
    url = sandbox.urls(GENERIC_TENANT).token

    _, _, response = await token_request(
        http, url, _exchange_form(code, verifier), basic_auth("syncsvc-confidential", "wrong")
    )

    assert response.headers["WWW-Authenticate"].startswith("Basic")


@pytest.mark.usefixtures("auto_approve")
async def test_client_secret_post(sandbox: RunningSandbox, http: aiohttp.ClientSession) -> None:
    sandbox.state.config.clients.append(
        ClientRegistration(
            client_id="poster",
            auth="client_secret_post",
            secret="s3cret",
            redirect_uris=[TEST_REDIRECT_URI],
        )
    )
    code, verifier = await _code_for(http, sandbox, "poster")
    url = sandbox.urls(GENERIC_TENANT).token
    form = _exchange_form(code, verifier) | {"client_id": "poster"}

    refused, _, _ = await token_request(http, url, form | {"client_secret": "nope"})
    basic, _, _ = await token_request(http, url, form, basic_auth("poster", "s3cret"))
    accepted, body, _ = await token_request(http, url, form | {"client_secret": "s3cret"})

    assert (refused, basic) == (401, 401)
    assert accepted == 200, body


@pytest.mark.usefixtures("auto_approve")
async def test_public_client_may_not_send_a_secret(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    code, verifier = await _code_for(http, sandbox, "syncsvc-public")
    form = _exchange_form(code, verifier) | {"client_id": "syncsvc-public", "client_secret": "x"}

    status, body, _ = await token_request(http, sandbox.urls(GENERIC_TENANT).token, form)

    assert status == 401
    assert body["error"] == "invalid_client"


async def test_unknown_grant_type(sandbox: RunningSandbox, http: aiohttp.ClientSession) -> None:
    form = {"grant_type": "password", "client_id": "syncsvc-public"}

    status, body, _ = await token_request(http, sandbox.urls(GENERIC_TENANT).token, form)

    assert status == 400
    assert body["error"] == "unsupported_grant_type"


async def test_token_endpoint_of_unknown_tenant_or_wrong_host_is_404(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    token_url = sandbox.urls(CERNER_TENANT).token
    host = sandbox.tenant(CERNER_TENANT).host
    form = {"grant_type": "refresh_token", "refresh_token": "x", "client_id": "syncsvc-public"}

    wrong_host, _, _ = await token_request(http, token_url.replace(host, "other-host"), form)
    unknown, _, _ = await token_request(http, token_url.replace(CERNER_TENANT, "nope"), form)
    epic_shape, _, _ = await token_request(
        http, f"{sandbox.origin}/epic/{CERNER_TENANT}/oauth2/token", form
    )

    assert (wrong_host, unknown, epic_shape) == (404, 404, 404)


@pytest.mark.usefixtures("auto_approve")
async def test_token_outage_fault(sandbox: RunningSandbox, http: aiohttp.ClientSession) -> None:
    sandbox.tenant(GENERIC_TENANT).faults.append(
        FaultSpec(kind="token_outage", target="token", count=1)
    )
    form = {"grant_type": "refresh_token", "refresh_token": "x", "client_id": "syncsvc-public"}
    url = sandbox.urls(GENERIC_TENANT).token

    first, _, response = await token_request(http, url, form)
    second, body, _ = await token_request(http, url, form)

    assert first == 503
    assert response.headers["Retry-After"] == "1"
    assert second == 400
    assert body["error"] == "invalid_grant"


@pytest.mark.usefixtures("auto_approve")
async def test_epic_merged_400_html_fault(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.tenant(EPIC_TENANT).faults.append(
        FaultSpec(kind="epic_merged_400_html", target="token", count=1)
    )

    pkce = new_pkce()
    code = await obtain_code(
        http, sandbox, EPIC_TENANT, authorize_params(sandbox, EPIC_TENANT, pkce=pkce)
    )
    form = _exchange_form(code, pkce.verifier) | {"client_id": "syncsvc-public"}
    url = sandbox.urls(EPIC_TENANT).token
    status, body, response = await token_request(http, url, form)

    assert status == 400
    assert response.content_type == "text/html"
    assert isinstance(body, str)
    assert "<html>" in body
    # The fault answered before the code was looked at, so the code is still good.
    status, body, _ = await token_request(http, url, form)
    assert status == 200, body


@pytest.mark.usefixtures("auto_approve")
async def test_fhir_faults_do_not_hit_the_token_endpoint(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.tenant(GENERIC_TENANT).faults.append(FaultSpec(kind="token_outage", target="fhir"))

    body = await obtain_tokens(http, sandbox, GENERIC_TENANT)

    assert body["access_token"]


@pytest.mark.usefixtures("auto_approve")
async def test_token_latency_fault(sandbox: RunningSandbox, http: aiohttp.ClientSession) -> None:
    sandbox.tenant(GENERIC_TENANT).faults.append(
        FaultSpec(kind="latency", target="token", count=1, latency_ms=300)
    )

    started = time.monotonic()
    body = await obtain_tokens(http, sandbox, GENERIC_TENANT, scope=DEFAULT_SCOPE)

    assert time.monotonic() - started >= 0.3
    assert body["access_token"]


async def test_opaque_token_mode_names_no_tenant_and_still_answers_tenant_mismatch(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.tenant(CERNER_TENANT).policy.auto_approve_patient = "12724066"
    sandbox.tenant(CERNER_TENANT).policy.opaque_tokens = True
    sandbox.tenant(CERNER_TENANT).policy.issue_tokens_for_tenant = "another-tenant"

    body = await obtain_tokens(http, sandbox, CERNER_TENANT)

    # Nothing the client can read says which tenant the grant is for ...
    assert "tenant" not in body
    assert body["access_token"].count(".") == 0
    # ... and only the FHIR server, which knows, answers with tenant-mismatch.
    url = f"{sandbox.urls(CERNER_TENANT).fhir_base}/Patient/12724066"
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    async with http.get(url, headers=headers) as response:
        assert response.status == 401
        assert "tenant-mismatch" in await response.text()
    sandbox.tenant(CERNER_TENANT).policy.issue_tokens_for_tenant = None
    good = await obtain_tokens(http, sandbox, CERNER_TENANT)
    headers = {"Authorization": f"Bearer {good['access_token']}"}
    async with http.get(url, headers=headers) as response:
        assert response.status == 200


@pytest.mark.parametrize(
    ("scope", "granted"),
    [
        # One space-free string: a single scope nobody knows, so nothing can be granted.
        ("launch/patient,openid,patient/Observation.read", None),
        # Space and comma: each name with a trailing comma is unknown and dropped in silence.
        (
            "launch/patient openid, patient/Patient.read, patient/Observation.read",
            "launch/patient patient/Observation.read",
        ),
    ],
)
async def test_comma_separated_scopes_are_answered_as_cerner_does(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, scope: str, granted: str | None
) -> None:
    sandbox.tenant(CERNER_TENANT).policy.auto_approve_patient = "12724066"
    pkce = new_pkce()
    params = authorize_params(sandbox, CERNER_TENANT, scope=scope, pkce=pkce)
    code = await obtain_code(http, sandbox, CERNER_TENANT, params)

    status, body = await exchange_code(http, sandbox, CERNER_TENANT, code, verifier=pkce.verifier)

    if granted is None:
        assert status == 400
        assert body["error"] == "invalid_scope"
        assert EMPTY_SCOPES_URN in unquote(body["error_uri"])
    else:
        assert status == 200
        assert body["scope"] == granted
