"""Paging over real HTTP: opaque page contexts, 10,000 resources of one patient, refusals."""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import orjson
import pytest

from syncsvc.sandbox.config import SandboxConfig
from syncsvc.sandbox.server import RunningSandbox
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT

from .tokens import bearer, mint_access_token

NANCY = "12724066"
WILMA = "12742400"
LARGE = 10_000
MAX_PAGES = 200


@pytest.fixture
def sandbox_config(sandbox_config: SandboxConfig) -> SandboxConfig:
    """Nancy with 10,000 Observations (other tests here page Wilma's 400 to stay quick)."""
    sandbox_config.tenants[0].patients[0].sizes = {"Observation": LARGE}
    return sandbox_config


async def _get(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url, headers=bearer(token)) as response:
        return response.status, orjson.loads(await response.read())


def _next(bundle: dict[str, Any]) -> str | None:
    return next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)


async def _walk(
    http: aiohttp.ClientSession, url: str, token: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All resources and all pages of a search, following ``next`` for at most MAX_PAGES."""
    resources: list[dict[str, Any]] = []
    pages: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url is not None:
        assert len(pages) < MAX_PAGES, "paging did not end"
        status, bundle = await _get(http, next_url, token)
        assert status == 200, bundle
        pages.append(bundle)
        resources.extend(entry["resource"] for entry in bundle.get("entry", []))
        next_url = _next(bundle)
    return resources, pages


async def test_ten_thousand_resources_page_completely_once_each_in_stable_order(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    base = sandbox.urls(CERNER_TENANT).fhir_base
    token = mint_access_token(sandbox, CERNER_TENANT, NANCY, "patient/Observation.read")
    first_url = f"{base}/Observation?patient={NANCY}&_count=200"

    resources, pages = await _walk(http, first_url, token)
    again, _ = await _walk(http, first_url, token)

    ids = [r["id"] for r in resources]
    assert len(ids) == LARGE
    assert len(set(ids)) == LARGE
    assert len(pages) == LARGE // 200
    assert all(len(page["entry"]) == 200 for page in pages)
    assert all(page["total"] == LARGE for page in pages)
    keys = [(r["meta"]["lastUpdated"], r["id"]) for r in resources]
    assert keys == sorted(keys)
    assert [r["id"] for r in again] == ids
    assert {r["subject"]["reference"] for r in resources} == {f"Patient/{NANCY}"}


async def test_late_pages_of_ten_thousand_are_no_slower_than_early_ones(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    """Paging cost does not grow with the offset (no re-scan or re-generation per page)."""
    base = sandbox.urls(CERNER_TENANT).fhir_base
    token = mint_access_token(sandbox, CERNER_TENANT, NANCY, "patient/Observation.read")
    next_url: str | None = f"{base}/Observation?patient={NANCY}&_count=100"
    durations: list[float] = []
    while next_url is not None:
        assert len(durations) < MAX_PAGES, "paging did not end"
        started = time.perf_counter()
        status, bundle = await _get(http, next_url, token)
        durations.append(time.perf_counter() - started)
        assert status == 200
        next_url = _next(bundle)

    assert len(durations) == LARGE // 100
    # Skip the first page (it builds the search); compare medians, with a floor for timer noise.
    early = statistics.median(durations[1:11])
    late = statistics.median(durations[-10:])
    assert late <= 3 * early + 0.02, f"early pages {early:.4f}s, late pages {late:.4f}s"


async def test_next_links_are_opaque_absolute_and_under_the_base(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    base = sandbox.urls(CERNER_TENANT).fhir_base
    token = mint_access_token(sandbox, CERNER_TENANT, WILMA, "patient/Observation.read")

    _, first = await _get(http, f"{base}/Observation?patient={WILMA}&_count=7", token)
    next_url = _next(first)
    assert next_url is not None
    _, second = await _get(http, next_url, token)

    assert next_url.startswith(f"{base}/Observation?")
    params = parse_qs(urlsplit(next_url).query)
    assert params["direction"] == ["NEXT"]
    assert str(uuid.UUID(params["pageContext"][0])) == params["pageContext"][0]
    assert set(params) == {"pageContext", "direction"}
    assert second["link"][0] == {"relation": "self", "url": next_url}
    assert len(second["entry"]) == 7
    assert {e["resource"]["id"] for e in first["entry"]}.isdisjoint(
        e["resource"]["id"] for e in second["entry"]
    )


async def test_a_last_page_has_no_next(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    base = sandbox.urls(CERNER_TENANT).fhir_base
    token = mint_access_token(sandbox, CERNER_TENANT, WILMA, "patient/Observation.read")

    resources, pages = await _walk(http, f"{base}/Observation?patient={WILMA}&_count=150", token)

    assert [len(p["entry"]) for p in pages] == [150, 150, 100]
    assert len({r["id"] for r in resources}) == 400


async def test_an_unknown_page_context_is_400(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    base = sandbox.urls(CERNER_TENANT).fhir_base
    token = mint_access_token(sandbox, CERNER_TENANT, NANCY, "patient/Observation.read")

    status, outcome = await _get(
        http, f"{base}/Observation?pageContext={uuid.uuid4()}&direction=NEXT", token
    )

    assert status == 400
    assert outcome["issue"][0]["code"] == "invalid"


async def test_a_page_context_is_bound_to_its_type_and_tenant(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    scopes = "patient/Observation.read patient/Condition.read"
    cerner = mint_access_token(sandbox, CERNER_TENANT, WILMA, scopes)
    epic = mint_access_token(sandbox, EPIC_TENANT, WILMA, scopes)
    cerner_base = sandbox.urls(CERNER_TENANT).fhir_base
    _, first = await _get(http, f"{cerner_base}/Observation?patient={WILMA}&_count=5", cerner)
    query = urlsplit(_next(first) or "").query

    other_type = await _get(http, f"{cerner_base}/Condition?{query}", cerner)
    other_tenant = await _get(
        http, f"{sandbox.urls(EPIC_TENANT).fhir_base}/Observation?{query}", epic
    )

    assert other_type[0] == 400
    assert other_tenant[0] == 400


@pytest.mark.parametrize(("tenant_id", "expected"), [(CERNER_TENANT, 403), (EPIC_TENANT, 404)])
async def test_another_patients_page_context_is_refused(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, tenant_id: str, expected: int
) -> None:
    base = sandbox.urls(tenant_id).fhir_base
    scopes = "patient/Observation.read"
    category = "&category=vital-signs" if tenant_id == EPIC_TENANT else ""
    nancy = mint_access_token(sandbox, tenant_id, NANCY, scopes)
    wilma = mint_access_token(sandbox, tenant_id, WILMA, scopes)
    _, first = await _get(http, f"{base}/Observation?patient={WILMA}&_count=5{category}", wilma)
    next_url = _next(first)
    assert next_url is not None

    status, outcome = await _get(http, next_url, nancy)

    assert status == expected
    assert outcome["resourceType"] == "OperationOutcome"
