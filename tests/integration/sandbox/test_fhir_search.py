"""FHIR search over real HTTP: bundle shape, vendor base shapes, search rules of each profile."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from syncsvc.sandbox.config import COMPARTMENT_TYPES, SandboxConfig
from syncsvc.sandbox.data import PATIENT_FIELD
from syncsvc.sandbox.server import RunningSandbox
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT

from .tokens import bearer, mint_access_token

NANCY = "12724066"
SNOMED = "http://snomed.info/sct"
EVERYTHING = " ".join(f"patient/{t}.read" for t in ("Patient", *COMPARTMENT_TYPES, "Binary"))


@pytest.fixture
def sandbox_config(sandbox_config: SandboxConfig) -> SandboxConfig:
    """Nancy with enough Observations and CarePlans for count and category rules to show."""
    for tenant in sandbox_config.tenants:
        tenant.patients[0].sizes = {"Observation": 300, "CarePlan": 12, "Goal": 3}
    return sandbox_config


async def _search(
    http: aiohttp.ClientSession, sandbox: RunningSandbox, tenant_id: str, query: str
) -> tuple[int, dict[str, Any]]:
    token = mint_access_token(sandbox, tenant_id, NANCY, EVERYTHING)
    url = f"{sandbox.urls(tenant_id).fhir_base}/{query}"
    async with http.get(url, headers=bearer(token)) as response:
        return response.status, orjson.loads(await response.read())


def _issue_code(outcome: dict[str, Any]) -> str:
    assert outcome["resourceType"] == "OperationOutcome"
    return str(outcome["issue"][0]["code"])


def _ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


@pytest.mark.parametrize("tenant_id", [CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT])
async def test_every_compartment_type_is_searchable_under_each_vendor_base(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, tenant_id: str
) -> None:
    base = sandbox.urls(tenant_id).fhir_base
    categories = {"Observation": "vital-signs", "CarePlan": "assess-plan"}
    if tenant_id == EPIC_TENANT:
        categories["CarePlan"] = "38717003"
    policy = sandbox.tenant(tenant_id).policy
    for resource_type in COMPARTMENT_TYPES:
        if resource_type in (*policy.unserved_types, *policy.unsearchable_types):
            continue  # answered as the vendor does: see the tests below
        query = f"{resource_type}?patient={NANCY}"
        if resource_type in categories:
            query += f"&category={categories[resource_type]}"
        status, bundle = await _search(http, sandbox, tenant_id, query)

        assert status == 200, (resource_type, bundle)
        assert bundle["resourceType"] == "Bundle"
        assert bundle["type"] == "searchset"
        assert bundle["link"][0] == {"relation": "self", "url": f"{base}/{query}"}
        assert bundle["entry"], resource_type
        for entry in bundle["entry"]:
            resource = entry["resource"]
            assert resource["resourceType"] == resource_type
            assert entry["fullUrl"] == f"{base}/{resource_type}/{resource['id']}"
            assert entry["search"] == {"mode": "match"}
            assert resource["meta"]["versionId"]
            assert resource["meta"]["lastUpdated"].endswith("Z")
            field = PATIENT_FIELD.get(resource_type, "subject")
            reference = {"reference": f"Patient/{NANCY}"}
            assert resource[field] == ([reference] if field == "target" else reference)


async def test_search_answers_fhir_json_sorted_by_last_updated(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    token = mint_access_token(sandbox, GENERIC_TENANT, NANCY, EVERYTHING)
    url = f"{sandbox.urls(GENERIC_TENANT).fhir_base}/Condition?patient={NANCY}"
    async with http.get(url, headers=bearer(token)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/fhir+json"
        bundle = orjson.loads(await response.read())

    keys = [(e["resource"]["meta"]["lastUpdated"], e["resource"]["id"]) for e in bundle["entry"]]
    assert keys == sorted(keys)
    assert bundle["total"] == len(keys)


async def test_subject_works_like_patient(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    _, by_patient = await _search(http, sandbox, GENERIC_TENANT, f"Condition?patient={NANCY}")
    _, by_subject = await _search(
        http, sandbox, GENERIC_TENANT, f"Condition?subject=Patient/{NANCY}"
    )
    _, by_reference = await _search(
        http, sandbox, GENERIC_TENANT, f"Condition?patient=Patient/{NANCY}"
    )

    assert _ids(by_patient) == _ids(by_subject) == _ids(by_reference)


@pytest.mark.parametrize("tenant_id", [CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT])
async def test_a_compartment_search_without_patient_is_400(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, tenant_id: str
) -> None:
    status, outcome = await _search(http, sandbox, tenant_id, "Condition")

    assert status == 400
    assert _issue_code(outcome) == "required"


async def test_a_subject_that_is_not_a_patient_is_400(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    status, outcome = await _search(http, sandbox, GENERIC_TENANT, "Condition?subject=Group/7")

    assert status == 400
    assert _issue_code(outcome) == "invalid"


async def test_patient_search_by_id_and_by_token(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    _, by_id = await _search(http, sandbox, CERNER_TENANT, f"Patient?_id={NANCY}")
    _, by_token = await _search(http, sandbox, CERNER_TENANT, "Patient")

    assert _ids(by_id) == _ids(by_token) == [NANCY]
    patient = by_id["entry"][0]["resource"]
    assert patient["name"][0]["family"] == "Smart"
    assert patient["name"][0]["given"] == ["Nancy"]
    assert patient["gender"] == "female"
    assert patient["birthDate"] == "1990-09-15"


@pytest.mark.parametrize(
    "case",
    [
        (CERNER_TENANT, "Observation", 50, 200),
        (CERNER_TENANT, "Condition", 20, 100),
        (EPIC_TENANT, "Condition", 100, 1000),
    ],
)
async def test_count_defaults_and_maxima_follow_the_policy(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, case: tuple[str, str, int, int]
) -> None:
    tenant_id, resource_type, default, maximum = case
    size = maximum + 5
    sandbox.tenant(tenant_id).patients[0].sizes[resource_type] = size
    query = f"{resource_type}?patient={NANCY}"
    if tenant_id == EPIC_TENANT and resource_type == "Observation":
        query += "&category=laboratory,vital-signs,survey,social-history"

    _, first = await _search(http, sandbox, tenant_id, query)
    _, clamped = await _search(http, sandbox, tenant_id, f"{query}&_count={maximum * 10}")
    _, small = await _search(http, sandbox, tenant_id, f"{query}&_count=3")

    assert len(first["entry"]) == default
    assert len(clamped["entry"]) == maximum
    assert len(small["entry"]) == 3
    assert first["total"] == size


async def test_document_reference_count_is_capped_at_100_on_cerner(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.tenant(CERNER_TENANT).patients[0].sizes["DocumentReference"] = 150
    query = f"DocumentReference?patient={NANCY}"

    _, default = await _search(http, sandbox, CERNER_TENANT, query)
    _, clamped = await _search(http, sandbox, CERNER_TENANT, f"{query}&_count=150")

    assert (len(default["entry"]), len(clamped["entry"])) == (10, 100)


async def test_count_zero_gives_only_the_total(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    _, bundle = await _search(http, sandbox, GENERIC_TENANT, f"Goal?patient={NANCY}&_count=0")

    assert bundle["total"] == 3
    assert "entry" not in bundle
    assert [link["relation"] for link in bundle["link"]] == ["self"]


@pytest.mark.parametrize("count", ["-1", "ten", "2.5"])
async def test_a_malformed_count_is_400(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, count: str
) -> None:
    status, outcome = await _search(
        http, sandbox, GENERIC_TENANT, f"Goal?patient={NANCY}&_count={count}"
    )

    assert status == 400
    assert _issue_code(outcome) == "invalid"


async def test_last_updated_filters_with_each_prefix(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    query = f"Observation?patient={NANCY}&_count=200"
    _, full = await _search(http, sandbox, CERNER_TENANT, query)
    stamps = [e["resource"]["meta"]["lastUpdated"] for e in full["entry"]]
    pivot = stamps[100]

    results = {}
    for prefix in ("gt", "ge", "lt", "le"):
        _, page = await _search(
            http, sandbox, CERNER_TENANT, f"{query}&_lastUpdated={prefix}{pivot}"
        )
        results[prefix] = page["total"]
    _, window = await _search(
        http,
        sandbox,
        CERNER_TENANT,
        f"{query}&_lastUpdated=ge{stamps[10]}&_lastUpdated=lt{stamps[20]}",
    )

    total = full["total"]
    assert total == 300
    assert results["ge"] == total - 100
    assert results["gt"] == total - 101
    assert results["lt"] == 100
    assert results["le"] == 101
    assert _ids(window) == [e["resource"]["id"] for e in full["entry"][10:20]]


async def test_last_updated_with_a_date_or_an_offset(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    query = f"Condition?patient={NANCY}"

    _, future = await _search(http, sandbox, CERNER_TENANT, f"{query}&_lastUpdated=gt2100-01-01")
    _, past = await _search(
        http, sandbox, CERNER_TENANT, f"{query}&_lastUpdated=ge2000-01-01T00:00:00%2B02:00"
    )

    assert future["total"] == 0
    assert past["total"] > 0


@pytest.mark.parametrize("value", ["sa2020-01-01", "gt2020-13-45", "ge2020-01-01T10:00:00"])
async def test_an_unsupported_last_updated_value_is_400(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, value: str
) -> None:
    status, outcome = await _search(
        http, sandbox, CERNER_TENANT, f"Condition?patient={NANCY}&_lastUpdated={value}"
    )

    assert status == 400
    assert _issue_code(outcome) in ("invalid", "not-supported")


@pytest.mark.parametrize(
    ("tenant_id", "resource_type"),
    [(CERNER_TENANT, "Goal"), (CERNER_TENANT, "Immunization"), (EPIC_TENANT, "Condition")],
)
async def test_last_updated_is_refused_where_the_vendor_does_not_support_it(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, tenant_id: str, resource_type: str
) -> None:
    status, outcome = await _search(
        http, sandbox, tenant_id, f"{resource_type}?patient={NANCY}&_lastUpdated=ge2020-01-01"
    )

    assert status == 400
    assert _issue_code(outcome) == "not-supported"


async def test_category_filters_observations(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    base = f"Observation?patient={NANCY}&_count=1000"
    _, everything = await _search(http, sandbox, GENERIC_TENANT, base)
    _, vitals = await _search(http, sandbox, GENERIC_TENANT, base + "&category=vital-signs")
    _, labs = await _search(
        http,
        sandbox,
        GENERIC_TENANT,
        base + "&category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
    )
    _, either = await _search(
        http, sandbox, GENERIC_TENANT, base + "&category=vital-signs,laboratory"
    )

    def category_of(entry: dict[str, Any]) -> str:
        return str(entry["resource"]["category"][0]["coding"][0]["code"])

    assert vitals["total"] > 0
    assert labs["total"] > 0
    assert {category_of(e) for e in vitals["entry"]} == {"vital-signs"}
    assert {category_of(e) for e in labs["entry"]} == {"laboratory"}
    assert either["total"] == vitals["total"] + labs["total"] < everything["total"]


@pytest.mark.parametrize(
    ("tenant_id", "query"),
    [
        (CERNER_TENANT, "CarePlan"),
        (EPIC_TENANT, "CarePlan"),
        (EPIC_TENANT, "Observation"),
    ],
)
async def test_required_category_is_400_required_when_missing(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, tenant_id: str, query: str
) -> None:
    status, outcome = await _search(http, sandbox, tenant_id, f"{query}?patient={NANCY}")

    assert status == 400
    assert _issue_code(outcome) == "required"


async def test_cerner_care_plans_need_assess_plan(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    status, outcome = await _search(
        http, sandbox, CERNER_TENANT, f"CarePlan?patient={NANCY}&category=longitudinal"
    )
    ok_status, bundle = await _search(
        http, sandbox, CERNER_TENANT, f"CarePlan?patient={NANCY}&category=assess-plan"
    )

    assert status == 400
    assert _issue_code(outcome) == "value"
    assert ok_status == 200
    assert bundle["total"] == 12


async def test_epic_care_plan_categories_split_the_plans(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    query = f"CarePlan?patient={NANCY}&category="
    _, longitudinal = await _search(http, sandbox, EPIC_TENANT, query + "38717003")
    _, qualified = await _search(http, sandbox, EPIC_TENANT, query + f"{SNOMED}|38717003")
    _, encounter = await _search(http, sandbox, EPIC_TENANT, query + "734163000")

    assert _ids(longitudinal) == _ids(qualified)
    assert longitudinal["total"] + encounter["total"] == 12
    assert longitudinal["total"] > 0
    assert encounter["total"] > 0


@pytest.mark.parametrize(
    "category", ["longitudinal", "encounter", "assess-plan", "urn:oid:1.2.3|38717003"]
)
async def test_epic_care_plans_take_snomed_codes_only(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, category: str
) -> None:
    status, outcome = await _search(
        http, sandbox, EPIC_TENANT, f"CarePlan?patient={NANCY}&category={category}"
    )

    assert status == 400
    assert _issue_code(outcome) == "value"


async def test_generic_tenants_need_no_category(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    status, bundle = await _search(http, sandbox, GENERIC_TENANT, f"CarePlan?patient={NANCY}")

    assert status == 200
    assert bundle["total"] == 12


async def test_an_unserved_type_is_404_and_binary_is_not_searchable(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    unserved_status, unserved = await _search(
        http, sandbox, GENERIC_TENANT, f"Basic?patient={NANCY}"
    )
    binary_status, binary = await _search(http, sandbox, GENERIC_TENANT, f"Binary?patient={NANCY}")

    assert (unserved_status, _issue_code(unserved)) == (404, "not-supported")
    assert (binary_status, _issue_code(binary)) == (404, "not-supported")


async def test_a_type_the_vendor_does_not_offer_is_404_there_and_served_elsewhere(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    cerner_status, cerner = await _search(
        http, sandbox, CERNER_TENANT, f"ImagingStudy?patient={NANCY}"
    )
    epic_status, epic = await _search(http, sandbox, EPIC_TENANT, f"ImagingStudy?patient={NANCY}")

    assert (cerner_status, _issue_code(cerner)) == (404, "not-supported")
    assert epic_status == 200
    assert _ids(epic)


@pytest.mark.parametrize(
    ("tenant_id", "code"), [(CERNER_TENANT, "required"), (EPIC_TENANT, "not-supported")]
)
async def test_provenance_is_not_searched_per_patient_where_the_vendor_cannot(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, tenant_id: str, code: str
) -> None:
    status, outcome = await _search(http, sandbox, tenant_id, f"Provenance?patient={NANCY}")
    generic_status, generic = await _search(
        http, sandbox, GENERIC_TENANT, f"Provenance?patient={NANCY}"
    )

    assert (status, _issue_code(outcome)) == (400, code)
    assert generic_status == 200
    assert all(
        {"reference": f"Patient/{NANCY}"} in e["resource"]["target"] for e in generic["entry"]
    )


@pytest.mark.parametrize("tenant_id", [CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT])
async def test_resource_routes_do_not_shadow_metadata_or_well_known(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, tenant_id: str
) -> None:
    base = sandbox.urls(tenant_id).fhir_base
    for path in ("metadata", ".well-known/smart-configuration"):
        async with http.get(f"{base}/{path}") as response:
            # The resource server would demand a bearer token; these documents are public.
            assert response.status != 401, path
            assert "WWW-Authenticate" not in response.headers
