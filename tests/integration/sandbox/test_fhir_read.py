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


@pytest.mark.parametrize(
    ("tenant_id", "types"),
    [
        (CERNER_TENANT, ["application/pdf", "text/html"]),
        (EPIC_TENANT, ["text/html", "text/rtf"]),
        (GENERIC_TENANT, ["text/plain"]),
    ],
)
async def test_document_content_is_served_by_its_content_type(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, tenant_id: str, types: list[str]
) -> None:
    base = sandbox.urls(tenant_id).fhir_base
    token = mint_access_token(sandbox, tenant_id, NANCY, EVERYTHING)
    document = await _first(http, sandbox, tenant_id, token, f"DocumentReference?patient={NANCY}")
    attachments = [content["attachment"] for content in document["content"]]
    assert [a["contentType"] for a in attachments] == types

    for attachment in attachments:
        # Epic points at its Binaries relative to the base; the others with absolute URLs.
        relative = attachment["url"].startswith("Binary/")
        assert relative == (tenant_id == EPIC_TENANT)
        url = f"{base}/{attachment['url']}" if relative else attachment["url"]
        assert url.startswith(f"{base}/Binary/")
        headers = {**bearer(token), "Accept": attachment["contentType"]}
        async with http.get(url, headers=headers) as raw:
            assert raw.status == 200
            assert raw.headers["Content-Type"] == attachment["contentType"]
            content = await raw.read()
        assert len(content) == attachment["size"]
        if attachment["contentType"] == "application/pdf":
            assert content.startswith(b"%PDF-")
            assert content.rstrip().endswith(b"%%EOF")

        headers["Accept"] = "application/fhir+json"
        async with http.get(url, headers=headers) as wrapped:
            assert wrapped.status == 200
            assert wrapped.headers["Content-Type"] == "application/fhir+json"
            binary = orjson.loads(await wrapped.read())
        assert binary["resourceType"] == "Binary"
        assert binary["contentType"] == attachment["contentType"]
        assert base64.b64decode(binary["data"]) == content
        assert binary["securityContext"] == {"reference": f"DocumentReference/{document['id']}"}

        headers["Accept"] = "image/png"
        async with http.get(url, headers=headers) as other:
            # Cerner and Epic serve a Binary only as its own type or as FHIR JSON.
            assert other.status == (200 if tenant_id == GENERIC_TENANT else 406)


async def test_binary_needs_its_own_scope(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    token = mint_access_token(sandbox, CERNER_TENANT, NANCY, "patient/DocumentReference.read")
    document = await _first(
        http, sandbox, CERNER_TENANT, token, f"DocumentReference?patient={NANCY}"
    )

    url = document["content"][0]["attachment"]["url"]
    async with http.get(url, headers={**bearer(token), "Accept": "application/pdf"}) as response:
        assert response.status == 403


@pytest.mark.parametrize(("tenant_id", "expected"), [(CERNER_TENANT, 403), (EPIC_TENANT, 404)])
async def test_another_patients_binary_is_refused(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, tenant_id: str, expected: int
) -> None:
    wilma = mint_access_token(sandbox, tenant_id, WILMA, EVERYTHING)
    nancy = mint_access_token(sandbox, tenant_id, NANCY, EVERYTHING)
    document = await _first(http, sandbox, tenant_id, wilma, f"DocumentReference?patient={WILMA}")

    url = document["content"][0]["attachment"]["url"]
    base = sandbox.urls(tenant_id).fhir_base
    status, _, _ = await _get(http, url if url.startswith("http") else f"{base}/{url}", nancy)

    assert status == expected
