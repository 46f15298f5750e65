"""The sandbox's Patient/$everything: offered and advertised by the generic shape only, paged
under the same caps as searches, next links under the base, the token's patient and scopes."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from syncsvc.sandbox.config import COMPARTMENT_TYPES
from syncsvc.sandbox.server import RunningSandbox
from tests.fixtures.sandbox import CERNER_TENANT, GENERIC_TENANT
from tests.integration.sandbox.tokens import bearer, mint_access_token

NANCY = "12724066"
WILMA = "12742400"
ALL = " ".join(f"patient/{t}.read" for t in ("Patient", *COMPARTMENT_TYPES))


async def _get(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url, headers=bearer(token)) as response:
        return response.status, orjson.loads(await response.read())


async def test_everything_pages_the_whole_compartment_under_the_base(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    base = sandbox.urls(GENERIC_TENANT).fhir_base
    token = mint_access_token(sandbox, GENERIC_TENANT, NANCY, ALL)
    url: str | None = f"{base}/Patient/{NANCY}/$everything?_count=40"
    found: dict[str, set[str]] = {}
    pages = 0
    while url is not None and pages < 100:
        status, bundle = await _get(http, url, token)
        assert status == 200, bundle
        assert len(bundle.get("entry", [])) <= 40
        for entry in bundle.get("entry", []):
            resource = entry["resource"]
            found.setdefault(resource["resourceType"], set()).add(resource["id"])
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        assert url is None or url.startswith(f"{base}/Patient/{NANCY}/$everything?")
        pages += 1

    assert pages > 1
    assert set(found) == {"Patient", *COMPARTMENT_TYPES}
    for resource_type in COMPARTMENT_TYPES:
        status, bundle = await _get(
            http, f"{base}/{resource_type}?patient={NANCY}&_count=200", token
        )
        assert found[resource_type] == {e["resource"]["id"] for e in bundle["entry"]}


async def test_everything_keeps_to_the_token(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    base = sandbox.urls(GENERIC_TENANT).fhir_base
    narrow = mint_access_token(
        sandbox, GENERIC_TENANT, NANCY, "patient/Patient.read patient/Goal.read"
    )

    status, bundle = await _get(http, f"{base}/Patient/{NANCY}/$everything", narrow)
    foreign, _ = await _get(http, f"{base}/Patient/{WILMA}/$everything", narrow)

    assert status == 200
    assert {e["resource"]["resourceType"] for e in bundle["entry"]} == {"Patient", "Goal"}
    assert foreign in (401, 403)


async def test_cerner_shaped_tenants_neither_offer_nor_advertise_everything(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    base = sandbox.urls(CERNER_TENANT).fhir_base
    token = mint_access_token(sandbox, CERNER_TENANT, NANCY, ALL)

    status, outcome = await _get(http, f"{base}/Patient/{NANCY}/$everything", token)
    async with http.get(f"{base}/metadata") as response:
        statement = orjson.loads(await response.read())
    async with http.get(f"{sandbox.urls(GENERIC_TENANT).fhir_base}/metadata") as response:
        generic = orjson.loads(await response.read())

    assert (status, outcome["issue"][0]["code"]) == (404, "not-supported")
    patient = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    assert "operation" not in patient
    offered = next(r for r in generic["rest"][0]["resource"] if r["type"] == "Patient")
    assert offered["operation"][0]["name"] == "everything"
