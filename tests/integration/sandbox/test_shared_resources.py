"""The tenant's shared resources over real HTTP: read by id, ``_id`` search per vendor shape."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from syncsvc.sandbox.referenced import MISSING_PRACTITIONER, REFERENCED_TYPES
from syncsvc.sandbox.server import RunningSandbox
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT

from .tokens import bearer, mint_access_token

NANCY = "12724066"
SHARED = " ".join(f"patient/{t}.read" for t in REFERENCED_TYPES)


async def _get(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url, headers=bearer(token)) as response:
        return response.status, orjson.loads(await response.read())


@pytest.mark.parametrize("tenant_id", [GENERIC_TENANT, CERNER_TENANT, EPIC_TENANT])
async def test_shared_resources_are_read_by_id_and_a_missing_one_is_404(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, tenant_id: str
) -> None:
    token = mint_access_token(sandbox, tenant_id, NANCY, SHARED)
    base = sandbox.urls(tenant_id).fhir_base

    status, practitioner = await _get(http, f"{base}/Practitioner/pr-4821", token)
    missing, outcome = await _get(http, f"{base}/Practitioner/{MISSING_PRACTITIONER}", token)

    assert status == 200
    assert practitioner["resourceType"] == "Practitioner"
    assert practitioner["id"] == "pr-4821"
    assert missing == 404
    assert outcome["issue"][0]["code"] == "not-found"


async def test_a_token_without_the_type_is_refused(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    token = mint_access_token(sandbox, GENERIC_TENANT, NANCY, "patient/Observation.read")
    base = sandbox.urls(GENERIC_TENANT).fhir_base

    status, _ = await _get(http, f"{base}/Organization/org-main", token)

    assert status == 403


@pytest.mark.parametrize(
    ("tenant_id", "searchable"),
    [
        (GENERIC_TENANT, set(REFERENCED_TYPES)),
        (CERNER_TENANT, {"Practitioner", "Organization", "Location"}),
        (EPIC_TENANT, set()),
    ],
)
async def test_id_search_where_the_capability_statement_lists_it(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, tenant_id: str, searchable: set[str]
) -> None:
    token = mint_access_token(sandbox, tenant_id, NANCY, SHARED)
    base = sandbox.urls(tenant_id).fhir_base
    async with http.get(f"{base}/metadata") as response:
        statement = orjson.loads(await response.read())
    listed = {
        r["type"]
        for r in statement["rest"][0]["resource"]
        if any(p["name"] == "_id" for p in r["searchParam"])
    }

    status, bundle = await _get(
        http, f"{base}/Practitioner?_id=pr-4821,{MISSING_PRACTITIONER},pr-1177", token
    )
    refused, _ = await _get(http, f"{base}/Medication?_id=med-314076", token)

    assert listed & set(REFERENCED_TYPES) == searchable
    if "Practitioner" in searchable:
        assert status == 200
        assert sorted(e["resource"]["id"] for e in bundle["entry"]) == ["pr-1177", "pr-4821"]
    else:
        assert status == 400
    assert refused == (200 if "Medication" in searchable else 400)
