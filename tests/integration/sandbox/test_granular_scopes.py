"""Category-qualified (SMART v2 granular) grants: what the sandbox grants and what it enforces.

A tenant policy grants some categories of a type only; the issued token then finds resources of
those categories and is refused (403 insufficient_scope, Cerner's body) anything that could find
others: a search without a category, with another category, or a read of a resource of another.
"""

from __future__ import annotations

from urllib.parse import quote

import aiohttp
import orjson
import pytest

from syncsvc.sandbox.fhir import data_store
from syncsvc.sandbox.server import RunningSandbox
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT

from .authflow import obtain_tokens, refresh
from .tokens import bearer

NANCY = "12724066"
OBS = "http://terminology.hl7.org/CodeSystem/observation-category"
LAB = f"{OBS}|laboratory"
VITALS = f"{OBS}|vital-signs"


@pytest.fixture(autouse=True)
def auto_approve(sandbox: RunningSandbox) -> None:
    """Every tenant approves Nancy without a login page."""
    for tenant in sandbox.state.config.tenants:
        tenant.policy.auto_approve_patient = NANCY


async def _get(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, bytes]:
    async with http.get(url, headers=bearer(token)) as response:
        return response.status, await response.read()


def _observations(sandbox: RunningSandbox, tenant_id: str, category: str | None) -> str:
    url = f"{sandbox.urls(tenant_id).fhir_base}/Observation?patient={NANCY}&_count=200"
    return url if category is None else f"{url}&category={quote(category, safe='')}"


@pytest.mark.parametrize(
    "asked",
    [
        "patient/Observation.read",  # v1: narrowed into v2 scopes
        "patient/Observation.rs",
        f"patient/Observation.rs?category={LAB}&",  # malformed query: not granted at all
    ],
)
async def test_a_type_is_granted_for_the_policys_categories_only(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, asked: str
) -> None:
    sandbox.tenant(GENERIC_TENANT).policy.granted_categories = {"Observation": [LAB]}
    body = await obtain_tokens(
        http, sandbox, GENERIC_TENANT, scope=f"launch/patient patient/Condition.rs {asked}"
    )
    granted = body["scope"].split()
    if asked.endswith("&"):
        assert granted == ["launch/patient", "patient/Condition.rs"]
        return
    assert granted == [
        "launch/patient",
        "patient/Condition.rs",
        f"patient/Observation.rs?category={LAB}",
    ]


async def test_searches_beyond_the_granted_categories_are_refused(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.tenant(CERNER_TENANT).policy.granted_categories = {"Observation": [LAB]}
    body = await obtain_tokens(
        http, sandbox, CERNER_TENANT, scope="launch/patient patient/Observation.rs"
    )
    token = body["access_token"]

    status, page = await _get(http, _observations(sandbox, CERNER_TENANT, LAB), token)
    assert status == 200
    entries = orjson.loads(page).get("entry", [])
    assert entries
    codes = {
        coding["code"]
        for entry in entries
        for concept in entry["resource"]["category"]
        for coding in concept["coding"]
    }
    assert codes == {"laboratory"}

    for beyond in (None, VITALS, f"{LAB},{VITALS}", "laboratory"):
        status, refused = await _get(http, _observations(sandbox, CERNER_TENANT, beyond), token)
        assert status == 403, beyond
        assert b"insufficient_scope" in refused

    # A read by id: a laboratory result is granted, a vital sign is not.
    store = data_store(sandbox.app, sandbox.state)
    bucket = store.bucket(sandbox.tenant(CERNER_TENANT), NANCY, "Observation")
    assert bucket is not None
    lab = next(e for e in bucket.entries if LAB in e.categories)
    vital = next(e for e in bucket.entries if VITALS in e.categories)
    base = sandbox.urls(CERNER_TENANT).fhir_base
    assert (await _get(http, f"{base}/Observation/{lab.id}", token))[0] == 200
    assert (await _get(http, f"{base}/Observation/{vital.id}", token))[0] == 403


async def test_epic_required_categories_and_the_grant_combine(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.tenant(EPIC_TENANT).policy.granted_categories = {"Observation": [LAB, VITALS]}
    body = await obtain_tokens(
        http, sandbox, EPIC_TENANT, scope="launch/patient patient/Observation.rs"
    )
    assert body["scope"].split()[1:] == [
        f"patient/Observation.rs?category={LAB}",
        f"patient/Observation.rs?category={VITALS}",
    ]
    token = body["access_token"]
    assert (await _get(http, _observations(sandbox, EPIC_TENANT, VITALS), token))[0] == 200
    # Within Epic's list but outside the grant.
    social = f"{OBS}|social-history"
    assert (await _get(http, _observations(sandbox, EPIC_TENANT, social), token))[0] == 403


async def test_a_refresh_narrows_to_the_policys_categories_now(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    policy = sandbox.tenant(GENERIC_TENANT).policy
    policy.granted_categories = {"Observation": [LAB, VITALS]}
    body = await obtain_tokens(
        http,
        sandbox,
        GENERIC_TENANT,
        scope="launch/patient offline_access patient/Observation.rs",
    )
    policy.granted_categories = {"Observation": [LAB]}
    status, refreshed, _ = await refresh(
        http, sandbox, GENERIC_TENANT, refresh_token=body["refresh_token"]
    )
    assert status == 200
    assert refreshed["scope"].split() == [
        "launch/patient",
        "offline_access",
        f"patient/Observation.rs?category={LAB}",
    ]
    token = refreshed["access_token"]
    assert (await _get(http, _observations(sandbox, GENERIC_TENANT, VITALS), token))[0] == 403


async def test_a_personas_consent_overrides_the_tenants_type_by_type(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    tenant = sandbox.tenant(GENERIC_TENANT)
    tenant.policy.granted_categories = {"Observation": [LAB], "Condition": ["x|y"]}
    wilma = next(p for p in tenant.patients if p.id == "12742400")
    wilma.granted_categories = {"Observation": [VITALS]}
    asked = "launch/patient patient/Observation.rs"
    nancy = await obtain_tokens(http, sandbox, GENERIC_TENANT, scope=asked)
    tenant.policy.auto_approve_patient = wilma.id
    hers = await obtain_tokens(http, sandbox, GENERIC_TENANT, scope=asked, patient_id=wilma.id)
    assert nancy["scope"].split()[1:] == [f"patient/Observation.rs?category={LAB}"]
    assert hers["scope"].split()[1:] == [f"patient/Observation.rs?category={VITALS}"]
