"""The sandbox's authorize endpoint over real HTTP: validation, login + consent, error redirects."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import aiohttp
import pytest

from syncsvc.sandbox.config import ClientRegistration
from syncsvc.sandbox.server import RunningSandbox
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT, TEST_REDIRECT_URI

from .authflow import authorize, authorize_params, new_pkce, submit_login

URN_PREFIX = "urn:cerner:error:authorization-server:"


def _auto_approve(sandbox: RunningSandbox, tenant_id: str, patient: str = "12724066") -> None:
    sandbox.tenant(tenant_id).policy.auto_approve_patient = patient


def _urn(error_uri: str) -> str:
    path = urlsplit(error_uri).path
    return unquote(path.split("/errors/", 1)[1].split("/instances/", 1)[0])


@pytest.mark.parametrize("tenant_id", [CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT])
async def test_auto_approve_redirects_with_code_and_state(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, tenant_id: str
) -> None:
    _auto_approve(sandbox, tenant_id)
    params = authorize_params(sandbox, tenant_id, pkce=new_pkce(), state="s-123")

    result = await authorize(http, sandbox, tenant_id, params)

    assert result.status == 302
    assert result.location is not None
    assert result.location.startswith(TEST_REDIRECT_URI + "?")
    assert result.query["state"] == "s-123"
    assert len(result.query["code"]) >= 32
    assert "error" not in result.query


async def test_login_page_lists_patients_and_scopes(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    params = authorize_params(sandbox, GENERIC_TENANT, pkce=new_pkce())

    result = await authorize(http, sandbox, GENERIC_TENANT, params)

    assert result.status == 200
    assert "nancysmart" in result.body
    assert "Wilma" in result.body
    assert "patient/Observation.read" in result.body
    assert 'value="approve"' in result.body
    assert 'value="deny"' in result.body


async def test_login_page_escapes_request_values(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    params = authorize_params(sandbox, GENERIC_TENANT, pkce=new_pkce(), state='"><script>x')

    result = await authorize(http, sandbox, GENERIC_TENANT, params)

    assert result.status == 200
    assert "<script>x" not in result.body
    assert "&quot;&gt;&lt;script&gt;x" in result.body


async def test_login_approve_issues_code_for_that_patient(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    params = authorize_params(sandbox, GENERIC_TENANT, pkce=new_pkce())

    result = await submit_login(http, sandbox, GENERIC_TENANT, params, username="wilmasmart")

    assert result.status == 302
    assert result.query["state"] == "xyz-state"
    assert sandbox.state.codes[result.code].patient_id == "12742400"


async def test_login_with_wrong_password_shows_the_form_again(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    params = authorize_params(sandbox, GENERIC_TENANT, pkce=new_pkce())

    result = await submit_login(
        http, sandbox, GENERIC_TENANT, params, username="nancysmart", password="nope"
    )

    assert result.status == 401
    assert result.location is None
    assert "Wrong login or password" in result.body
    assert not sandbox.state.codes


async def test_deny_redirects_access_denied(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    params = authorize_params(sandbox, CERNER_TENANT, pkce=new_pkce())

    result = await submit_login(
        http, sandbox, CERNER_TENANT, params, username="nancysmart", decision="deny"
    )

    assert result.status == 302
    assert result.query["error"] == "access_denied"
    assert result.query["state"] == "xyz-state"
    assert "code" not in result.query


async def test_unknown_client_gets_an_html_page_not_a_redirect(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    params = authorize_params(sandbox, CERNER_TENANT, client_id="nobody", pkce=new_pkce())

    result = await authorize(http, sandbox, CERNER_TENANT, params)

    assert result.status == 400
    assert result.location is None
    assert "Unknown application" in result.body


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "http://127.0.0.1:8000/callback/",
        "http://127.0.0.1:8000/callback?x=1",
        "http://evil.example/callback",
        "",
    ],
)
async def test_redirect_uri_must_match_exactly(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, redirect_uri: str
) -> None:
    _auto_approve(sandbox, CERNER_TENANT)
    params = authorize_params(sandbox, CERNER_TENANT, redirect_uri=redirect_uri, pkce=new_pkce())

    result = await authorize(http, sandbox, CERNER_TENANT, params)

    assert result.status == 400
    assert result.location is None
    assert "Invalid redirect URI" in result.body


async def test_state_is_required(sandbox: RunningSandbox, http: aiohttp.ClientSession) -> None:
    _auto_approve(sandbox, GENERIC_TENANT)
    params = authorize_params(sandbox, GENERIC_TENANT, state=None, pkce=new_pkce())

    result = await authorize(http, sandbox, GENERIC_TENANT, params)

    assert result.status == 302
    assert result.query["error"] == "invalid_request"
    assert "state" in result.query["error_description"]
    assert "code" not in result.query


async def test_response_type_must_be_code(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    _auto_approve(sandbox, GENERIC_TENANT)
    params = authorize_params(
        sandbox, GENERIC_TENANT, pkce=new_pkce(), extra={"response_type": "token"}
    )

    result = await authorize(http, sandbox, GENERIC_TENANT, params)

    assert result.query["error"] == "unsupported_response_type"
    assert result.query["state"] == "xyz-state"


@pytest.mark.parametrize("aud_suffix", ["/", "x", None])
async def test_aud_must_equal_the_fhir_base_exactly(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, aud_suffix: str | None
) -> None:
    _auto_approve(sandbox, CERNER_TENANT)
    base = sandbox.urls(CERNER_TENANT).fhir_base
    aud = None if aud_suffix is None else base + aud_suffix
    params = authorize_params(sandbox, CERNER_TENANT, pkce=new_pkce(), extra={"aud": aud})

    result = await authorize(http, sandbox, CERNER_TENANT, params)

    assert result.status == 302
    assert result.query["error"] == "invalid_request"
    assert "aud" in result.query["error_description"]
    assert result.query["state"] == "xyz-state"


async def test_aud_of_another_tenant_is_refused(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    _auto_approve(sandbox, CERNER_TENANT)
    other = sandbox.urls(GENERIC_TENANT).fhir_base
    params = authorize_params(sandbox, CERNER_TENANT, pkce=new_pkce(), extra={"aud": other})

    result = await authorize(http, sandbox, CERNER_TENANT, params)

    assert result.query["error"] == "invalid_request"


async def test_pkce_required_refuses_a_request_without_challenge(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    _auto_approve(sandbox, GENERIC_TENANT)
    assert sandbox.tenant(GENERIC_TENANT).policy.pkce == "required"
    params = authorize_params(sandbox, GENERIC_TENANT)

    result = await authorize(http, sandbox, GENERIC_TENANT, params)

    assert result.query["error"] == "invalid_request"
    assert "code_challenge" in result.query["error_description"]


async def test_pkce_plain_method_is_refused(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    _auto_approve(sandbox, GENERIC_TENANT)
    params = authorize_params(
        sandbox,
        GENERIC_TENANT,
        extra={"code_challenge": "a" * 43, "code_challenge_method": "plain"},
    )

    result = await authorize(http, sandbox, GENERIC_TENANT, params)

    assert result.query["error"] == "invalid_request"
    assert "S256" in result.query["error_description"]


async def test_pkce_accepted_allows_a_request_without_challenge(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    _auto_approve(sandbox, EPIC_TENANT)
    assert sandbox.tenant(EPIC_TENANT).policy.pkce == "accepted"
    params = authorize_params(sandbox, EPIC_TENANT)

    result = await authorize(http, sandbox, EPIC_TENANT, params)

    assert sandbox.state.codes[result.code].code_challenge is None


async def test_pkce_ignored_does_not_bind_the_challenge(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    _auto_approve(sandbox, GENERIC_TENANT)
    sandbox.tenant(GENERIC_TENANT).policy.pkce = "ignored"
    params = authorize_params(sandbox, GENERIC_TENANT, pkce=new_pkce())

    result = await authorize(http, sandbox, GENERIC_TENANT, params)

    assert sandbox.state.codes[result.code].code_challenge is None


async def test_patient_scopes_without_launch_patient_is_missing_patient(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    _auto_approve(sandbox, CERNER_TENANT)
    params = authorize_params(
        sandbox, CERNER_TENANT, scope="openid patient/Observation.read", pkce=new_pkce()
    )

    result = await authorize(http, sandbox, CERNER_TENANT, params)

    # Cerner answers missing-patient as access_denied, the URN saying why.
    assert result.query["error"] == "access_denied"
    assert result.query["state"] == "xyz-state"
    assert _urn(result.query["error_uri"]) == URN_PREFIX + "oauth2:grant:missing-patient"


async def test_standalone_launch_of_an_ehr_launch_app_is_missing_patient(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    _auto_approve(sandbox, CERNER_TENANT)
    sandbox.state.config.clients.append(
        ClientRegistration(client_id="ehr-app", redirect_uris=[TEST_REDIRECT_URI], launch="ehr")
    )
    params = authorize_params(sandbox, CERNER_TENANT, client_id="ehr-app", pkce=new_pkce())

    result = await authorize(http, sandbox, CERNER_TENANT, params)

    assert result.query["error"] == "access_denied"
    assert _urn(result.query["error_uri"]) == URN_PREFIX + "oauth2:grant:missing-patient"
    assert "persona=patient&client=ehr-app" in result.query["error_uri"]


async def test_error_uri_has_the_cerner_shape(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    _auto_approve(sandbox, CERNER_TENANT)
    params = authorize_params(
        sandbox, CERNER_TENANT, scope="patient/Observation.read", pkce=new_pkce()
    )

    result = await authorize(http, sandbox, CERNER_TENANT, params)

    parts = urlsplit(result.query["error_uri"])
    assert f"{parts.scheme}://{parts.netloc}" == sandbox.origin
    assert "/errors/urn%3Acerner%3Aerror%3A" in parts.path
    instance = parts.path.rsplit("/instances/", 1)[1]
    assert len(instance) == 36
    assert parts.query == f"persona=patient&client=syncsvc-public&tenant={CERNER_TENANT}"


async def test_error_instance_page_explains_the_urn(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    _auto_approve(sandbox, CERNER_TENANT)
    params = authorize_params(
        sandbox, CERNER_TENANT, scope="patient/Observation.read", pkce=new_pkce()
    )
    result = await authorize(http, sandbox, CERNER_TENANT, params)

    async with http.get(result.query["error_uri"]) as response:
        page = await response.text()

    assert response.status == 200
    assert response.content_type == "text/html"
    assert "urn:cerner:error:authorization-server:oauth2:grant:missing-patient" in page
    assert "launch/patient" in page


async def test_error_instance_page_for_an_unknown_urn_is_404(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    url = f"{sandbox.origin}/errors/urn%3Anope/instances/1"
    async with http.get(url) as response:
        assert response.status == 404


async def test_a_launch_parameter_never_issued_is_invalid_launch_code(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    _auto_approve(sandbox, CERNER_TENANT)
    params = authorize_params(sandbox, CERNER_TENANT, pkce=new_pkce(), extra={"launch": "abc"})

    result = await authorize(http, sandbox, CERNER_TENANT, params)

    assert result.query["error"] == "invalid_request"
    assert _urn(result.query["error_uri"]) == (
        URN_PREFIX + "smart-v1:grant:launch:invalid-launch-code"
    )


async def test_provider_client_is_client_persona_mismatch(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    _auto_approve(sandbox, CERNER_TENANT)
    sandbox.state.config.clients.append(
        ClientRegistration(
            client_id="provider-app", redirect_uris=[TEST_REDIRECT_URI], persona="provider"
        )
    )
    params = authorize_params(sandbox, CERNER_TENANT, client_id="provider-app", pkce=new_pkce())

    result = await authorize(http, sandbox, CERNER_TENANT, params)

    assert result.query["error"] == "unauthorized_client"
    assert _urn(result.query["error_uri"]) == URN_PREFIX + "oauth2:grant:client-persona-mismatch"
    # The persona named is the one the client is registered for, as Cerner's links say.
    assert "persona=provider&client=provider-app" in result.query["error_uri"]


async def test_client_not_enabled_at_the_tenant_is_denied_by_server(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    _auto_approve(sandbox, CERNER_TENANT)
    sandbox.state.config.clients.append(
        ClientRegistration(
            client_id="epic-only", redirect_uris=[TEST_REDIRECT_URI], tenants=[EPIC_TENANT]
        )
    )
    params = authorize_params(sandbox, CERNER_TENANT, client_id="epic-only", pkce=new_pkce())

    result = await authorize(http, sandbox, CERNER_TENANT, params)

    assert result.query["error"] == "access_denied"
    assert _urn(result.query["error_uri"]) == URN_PREFIX + "oauth2:grant:denied-by-server"


async def test_unknown_tenant_is_404(sandbox: RunningSandbox, http: aiohttp.ClientSession) -> None:
    url = sandbox.urls(GENERIC_TENANT).authorize.replace(GENERIC_TENANT, "no-such-tenant")
    async with http.get(url, allow_redirects=False) as response:
        assert response.status == 404


async def test_a_tenant_through_another_vendors_url_shape_is_404(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    _auto_approve(sandbox, EPIC_TENANT)
    cerner_shape = f"{sandbox.origin}/tenants/{EPIC_TENANT}/protocols/oauth2/profiles/smart-v1"
    params = authorize_params(sandbox, EPIC_TENANT, pkce=new_pkce())
    async with http.get(
        f"{cerner_shape}/personas/patient/authorize", params=params, allow_redirects=False
    ) as response:
        assert response.status == 404
    async with http.get(f"{cerner_shape}/jwks") as response:
        assert response.status == 404


async def test_jwks_publishes_the_signing_key(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    async with http.get(sandbox.urls(EPIC_TENANT).jwks) as response:
        body = await response.json()

    assert response.status == 200
    assert [k["kid"] for k in body["keys"]] == [sandbox.state.signer.kid]
    assert "d" not in body["keys"][0]
