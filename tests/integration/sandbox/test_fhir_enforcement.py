"""Resource-server enforcement over real HTTP: token validity, tenant, scope and patient checks."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from syncsvc.sandbox.server import RunningSandbox
from syncsvc.sandbox.tokens import TokenSigner
from syncsvc.smart.vendor_errors import classify_fhir_failure
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT

from .tokens import bearer, claims_of, mint_access_token

NANCY = "12724066"
WILMA = "12742400"
ALL_READ = "patient/Patient.read patient/Observation.read patient/Condition.read"

TENANT_MISMATCH_BODY = (
    '{"code":401,"message":"code=\\"urn:cerner:error:oauth2:resource-access:tenant-mismatch\\", '
    'error=\\"invalid_token\\", error_description=\\"Token is not valid for this tenant\\""}'
)
INSUFFICIENT_SCOPE_BODY = (
    '{"code":403,"message":"code=\\"urn:cerner:error:oauth2:resource-access:'
    'insufficient-scopes\\", error=\\"insufficient_scope\\", '
    'subcode=\\"no_scope_for_resource_path\\""}'
)


def _conditions_url(sandbox: RunningSandbox, tenant_id: str, patient: str = NANCY) -> str:
    return f"{sandbox.urls(tenant_id).fhir_base}/Condition?patient={patient}"


async def _get(
    http: aiohttp.ClientSession, url: str, token: str | None = None
) -> tuple[int, CIMultiDict[str], str]:
    headers = bearer(token) if token else {}
    async with http.get(url, headers=headers) as response:
        return response.status, response.headers.copy(), await response.text()


async def test_a_valid_token_reads_and_touches_its_grant(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    token = mint_access_token(sandbox, CERNER_TENANT, NANCY, ALL_READ)
    grant = sandbox.state.grants[str(claims_of(sandbox, token)["gid"])]
    grant.last_used_at = 0.0

    status, headers, _ = await _get(http, _conditions_url(sandbox, CERNER_TENANT), token)

    assert status == 200
    assert headers["Content-Type"] == "application/fhir+json"
    assert grant.last_used_at > 0


@pytest.mark.parametrize("tenant_id", [CERNER_TENANT, GENERIC_TENANT])
async def test_no_token_is_401_invalid_token(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, tenant_id: str
) -> None:
    status, headers, body = await _get(http, _conditions_url(sandbox, tenant_id))

    host = sandbox.tenant(tenant_id).host
    assert status == 401
    assert headers["WWW-Authenticate"].startswith(f'Bearer realm="{host}", error="invalid_token"')
    assert orjson.loads(body)["code"] == 401


async def test_a_forged_token_is_401(sandbox: RunningSandbox, http: aiohttp.ClientSession) -> None:
    genuine_claims = claims_of(sandbox, mint_access_token(sandbox, CERNER_TENANT, NANCY, ALL_READ))
    forged = TokenSigner(kid=sandbox.state.signer.kid).sign(genuine_claims)

    status, headers, _ = await _get(http, _conditions_url(sandbox, CERNER_TENANT), forged)

    assert status == 401
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]


async def test_an_expired_token_is_401_on_the_sandbox_clock(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    token = mint_access_token(sandbox, CERNER_TENANT, NANCY, ALL_READ, expires_in=570)
    url = _conditions_url(sandbox, CERNER_TENANT)
    assert (await _get(http, url, token))[0] == 200

    sandbox.state.clock_offset += 571
    status, headers, body = await _get(http, url, token)

    assert status == 401
    assert "expired" in headers["WWW-Authenticate"]
    assert "invalid_token" in body


async def test_epic_answers_401_with_an_empty_body(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    token = mint_access_token(sandbox, EPIC_TENANT, NANCY, ALL_READ, expires_in=-1)

    status, headers, body = await _get(http, _conditions_url(sandbox, EPIC_TENANT), token)

    assert (status, body) == (401, "")
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]


async def test_a_revoked_grant_or_access_token_is_401(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    url = _conditions_url(sandbox, CERNER_TENANT)
    by_grant = mint_access_token(sandbox, CERNER_TENANT, NANCY, ALL_READ)
    sandbox.state.grants[str(claims_of(sandbox, by_grant)["gid"])].revoked = True
    by_jti = mint_access_token(sandbox, CERNER_TENANT, NANCY, ALL_READ)
    sandbox.state.revoked_access_tokens.add(str(claims_of(sandbox, by_jti)["jti"]))
    orphan = mint_access_token(sandbox, CERNER_TENANT, NANCY, ALL_READ)
    del sandbox.state.grants[str(claims_of(sandbox, orphan)["gid"])]

    for token in (by_grant, by_jti, orphan):
        status, headers, _ = await _get(http, url, token)
        assert status == 401
        assert "revoked" in headers["WWW-Authenticate"]


@pytest.mark.parametrize("target", [CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT])
async def test_a_token_of_another_tenant_gets_the_canonical_tenant_mismatch(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, target: str
) -> None:
    issuer = GENERIC_TENANT if target != GENERIC_TENANT else CERNER_TENANT
    token = mint_access_token(sandbox, issuer, NANCY, ALL_READ)

    status, headers, body = await _get(http, _conditions_url(sandbox, target), token)

    host = sandbox.tenant(target).host
    assert status == 401
    assert headers["WWW-Authenticate"] == (
        f'Bearer realm="{host}", error="invalid_token", '
        'error_description="Token is not valid for this tenant"'
    )
    assert body == TENANT_MISMATCH_BODY
    assert headers["Content-Type"].startswith("application/json")


async def test_a_token_of_another_host_of_the_same_tenant_is_a_tenant_mismatch(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    token = mint_access_token(sandbox, CERNER_TENANT, NANCY, ALL_READ, host="fhir-ehr.other")

    status, _, body = await _get(http, _conditions_url(sandbox, CERNER_TENANT), token)

    assert (status, body) == (401, TENANT_MISMATCH_BODY)


@pytest.mark.parametrize("tenant_id", [CERNER_TENANT, GENERIC_TENANT])
async def test_a_type_outside_the_scopes_is_403_with_the_cerner_body(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, tenant_id: str
) -> None:
    token = mint_access_token(sandbox, tenant_id, NANCY, "patient/Observation.read")

    status, headers, body = await _get(http, _conditions_url(sandbox, tenant_id), token)

    assert (status, body) == (403, INSUFFICIENT_SCOPE_BODY)
    assert headers["Content-Type"].startswith("application/json")
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith(f'Bearer realm="{sandbox.tenant(tenant_id).host}", ')
    assert 'error="insufficient_scope"' in challenge
    assert 'error_description="' in challenge
    assert challenge.endswith('scope="patient/Condition.read"')
    failure = classify_fhir_failure(403, challenge, None, body.encode())
    assert failure.kind == "insufficient_scope"


async def test_epic_answers_insufficient_scope_with_a_header_only(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    token = mint_access_token(sandbox, EPIC_TENANT, NANCY, "patient/Observation.read")

    status, headers, body = await _get(http, _conditions_url(sandbox, EPIC_TENANT), token)

    assert (status, body) == (403, "")
    assert headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope"'


async def test_v2_scopes_separate_search_from_read(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    base = sandbox.urls(GENERIC_TENANT).fhir_base
    read_only = mint_access_token(sandbox, GENERIC_TENANT, NANCY, "patient/Condition.r")
    search_only = mint_access_token(sandbox, GENERIC_TENANT, NANCY, "patient/Condition.s")
    status, _, body = await _get(http, _conditions_url(sandbox, GENERIC_TENANT), search_only)
    assert status == 200
    condition_id = _first_id(body)

    assert (await _get(http, _conditions_url(sandbox, GENERIC_TENANT), read_only))[0] == 403
    assert (await _get(http, f"{base}/Condition/{condition_id}", read_only))[0] == 200
    assert (await _get(http, f"{base}/Condition/{condition_id}", search_only))[0] == 403


async def test_a_wildcard_scope_covers_every_type(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    token = mint_access_token(sandbox, GENERIC_TENANT, NANCY, "patient/*.read")

    status, _, _ = await _get(http, _conditions_url(sandbox, GENERIC_TENANT), token)

    assert status == 200


@pytest.mark.parametrize(("tenant_id", "expected"), [(CERNER_TENANT, 403), (EPIC_TENANT, 404)])
async def test_another_patients_data_is_refused_per_vendor(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, tenant_id: str, expected: int
) -> None:
    base = sandbox.urls(tenant_id).fhir_base
    wilma = mint_access_token(sandbox, tenant_id, WILMA, ALL_READ)
    nancy = mint_access_token(sandbox, tenant_id, NANCY, ALL_READ)
    wilmas_condition = _first_id(
        (await _get(http, _conditions_url(sandbox, tenant_id, WILMA), wilma))[2]
    )

    search = await _get(http, _conditions_url(sandbox, tenant_id, WILMA), nancy)
    by_subject = await _get(http, f"{base}/Condition?subject=Patient/{WILMA}", nancy)
    read = await _get(http, f"{base}/Condition/{wilmas_condition}", nancy)
    patient = await _get(http, f"{base}/Patient/{WILMA}", nancy)
    patient_search = await _get(http, f"{base}/Patient?_id={WILMA}", nancy)

    for status, _, body in (search, by_subject, read, patient, patient_search):
        assert status == expected
        assert "OperationOutcome" in body
        assert WILMA not in body


async def test_an_unknown_tenant_is_403(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    token = mint_access_token(sandbox, CERNER_TENANT, NANCY, ALL_READ)
    origin = sandbox.origin

    unknown = await _get(http, f"{origin}/r4/no-such-tenant/Condition?patient={NANCY}", token)
    # A Cerner tenant addressed through the Epic base shape is not a tenant of that profile.
    wrong_shape = await _get(
        http, f"{origin}/epic/{CERNER_TENANT}/api/FHIR/R4/Condition?patient={NANCY}", token
    )

    assert unknown[0] == 403
    assert wrong_shape[0] == 403


def _first_id(bundle_text: str) -> str:
    bundle = orjson.loads(bundle_text)
    return str(bundle["entry"][0]["resource"]["id"])
