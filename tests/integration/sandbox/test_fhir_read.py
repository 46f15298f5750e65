"""FHIR read over real HTTP: every type, versions, deletion (410), Binary content, refusals."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from syncsvc.sandbox.config import COMPARTMENT_TYPES
from syncsvc.sandbox.server import RunningSandbox
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT

from .tokens import bearer, mint_access_token

NANCY = "12724066"
WILMA = "12742400"
EVERYTHING = " ".join(f"patient/{t}.read" for t in ("Patient", *COMPARTMENT_TYPES, "Binary"))


async def _get(
    http: aiohttp.ClientSession, url: str, token: str
) -> tuple[int, CIMultiDict[str], dict[str, Any]]:
    async with http.get(url, headers=bearer(token)) as response:
        return response.status, response.headers.copy(), orjson.loads(await response.read())


async def _first(
    http: aiohttp.ClientSession, sandbox: RunningSandbox, tenant_id: str, token: str, query: str
) -> dict[str, Any]:
    status, _, bundle = await _get(http, f"{sandbox.urls(tenant_id).fhir_base}/{query}", token)
    assert status == 200
    resource: dict[str, Any] = bundle["entry"][0]["resource"]
    return resource


@pytest.mark.parametrize("resource_type", COMPARTMENT_TYPES)
async def test_a_searched_resource_reads_back_identically(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, resource_type: str
) -> None:
    token = mint_access_token(sandbox, GENERIC_TENANT, NANCY, EVERYTHING)
    searched = await _first(
        http, sandbox, GENERIC_TENANT, token, f"{resource_type}?patient={NANCY}"
    )
    url = f"{sandbox.urls(GENERIC_TENANT).fhir_base}/{resource_type}/{searched['id']}"

    status, headers, read = await _get(http, url, token)

    assert status == 200
    assert headers["Content-Type"] == "application/fhir+json"
    assert headers["ETag"] == 'W/"1"'
    assert read == searched


async def test_patient_read(sandbox: RunningSandbox, http: aiohttp.ClientSession) -> None:
    token = mint_access_token(sandbox, EPIC_TENANT, NANCY, "patient/Patient.read")
    url = f"{sandbox.urls(EPIC_TENANT).fhir_base}/Patient/{NANCY}"

    status, _, patient = await _get(http, url, token)

    assert status == 200
    assert patient["resourceType"] == "Patient"
    assert patient["id"] == NANCY
    assert patient["meta"]["versionId"] == "1"


@pytest.mark.parametrize("tenant_id", [CERNER_TENANT, EPIC_TENANT])
async def test_an_unknown_id_is_404(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, tenant_id: str
) -> None:
    token = mint_access_token(sandbox, tenant_id, NANCY, EVERYTHING)
    base = sandbox.urls(tenant_id).fhir_base

    for path in ("Condition/does-not-exist", "Patient/99999", "Binary/nope"):
        status, _, outcome = await _get(http, f"{base}/{path}", token)
        assert status == 404, path
        assert outcome["issue"][0]["code"] == "not-found"


async def test_document_content_is_a_binary_under_the_base(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    base = sandbox.urls(CERNER_TENANT).fhir_base
    token = mint_access_token(sandbox, CERNER_TENANT, NANCY, EVERYTHING)
    document = await _first(
        http, sandbox, CERNER_TENANT, token, f"DocumentReference?patient={NANCY}"
    )
    attachment = document["content"][0]["attachment"]
    assert attachment["url"].startswith(f"{base}/Binary/")

    status, headers, binary = await _get(http, attachment["url"], token)

    assert status == 200
    assert headers["Content-Type"] == "application/fhir+json"
    assert binary["resourceType"] == "Binary"
    assert binary["contentType"] == attachment["contentType"] == "text/plain"
    assert len(base64.b64decode(binary["data"])) == attachment["size"]
    assert binary["securityContext"] == {"reference": f"DocumentReference/{document['id']}"}


async def test_binary_needs_its_own_scope(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    token = mint_access_token(sandbox, CERNER_TENANT, NANCY, "patient/DocumentReference.read")
    document = await _first(
        http, sandbox, CERNER_TENANT, token, f"DocumentReference?patient={NANCY}"
    )

    async with http.get(document["content"][0]["attachment"]["url"], headers=bearer(token)) as r:
        assert r.status == 403


@pytest.mark.parametrize(("tenant_id", "expected"), [(CERNER_TENANT, 403), (EPIC_TENANT, 404)])
async def test_another_patients_binary_is_refused(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, tenant_id: str, expected: int
) -> None:
    wilma = mint_access_token(sandbox, tenant_id, WILMA, EVERYTHING)
    nancy = mint_access_token(sandbox, tenant_id, NANCY, EVERYTHING)
    document = await _first(http, sandbox, tenant_id, wilma, f"DocumentReference?patient={WILMA}")

    status, _, _ = await _get(http, document["content"][0]["attachment"]["url"], nancy)

    assert status == expected
