"""The sandbox's SMART discovery documents over real HTTP."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from syncsvc.sandbox.config import SERVED_TYPES
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.smart.scopes import DEFAULT_RESOURCE_TYPES
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as response:
        body = await response.json(content_type=None) if response.status == 200 else None
        return response.status, body


@pytest.mark.parametrize("tenant_id", [CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT])
async def test_smart_configuration_names_the_tenant_endpoints(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, tenant_id: str
) -> None:
    urls = sandbox.urls(tenant_id)

    status, doc = await _get(http, f"{urls.fhir_base}/.well-known/smart-configuration")

    assert status == 200
    assert doc["issuer"] == urls.issuer
    assert doc["jwks_uri"] == urls.jwks
    assert doc["authorization_endpoint"] == urls.authorize
    assert doc["token_endpoint"] == urls.token
    assert doc["revocation_endpoint"] == urls.revoke
    assert doc["introspection_endpoint"] == urls.introspect
    assert doc["response_types_supported"] == ["code"]
    assert doc["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert "private_key_jwt" in doc["token_endpoint_auth_methods_supported"]
    for capability in (
        "launch-standalone",
        "client-public",
        "client-confidential-symmetric",
        "client-confidential-asymmetric",
        "context-standalone-patient",
        "permission-offline",
        "permission-patient",
        "sso-openid-connect",
    ):
        assert capability in doc["capabilities"]


async def test_every_advertised_endpoint_answers(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    _, doc = await _get(
        http, f"{sandbox.urls(EPIC_TENANT).fhir_base}/.well-known/smart-configuration"
    )

    status, jwks = await _get(http, doc["jwks_uri"])

    assert status == 200
    assert jwks["keys"]
    for endpoint in ("token_endpoint", "revocation_endpoint", "introspection_endpoint"):
        async with http.post(doc[endpoint], data={"client_id": "nobody"}) as response:
            assert response.status == 401, endpoint


async def test_code_challenge_methods(sandbox: RunningSandbox, http: aiohttp.ClientSession) -> None:
    _, cerner = await _get(
        http, f"{sandbox.urls(CERNER_TENANT).fhir_base}/.well-known/smart-configuration"
    )
    _, generic = await _get(
        http, f"{sandbox.urls(GENERIC_TENANT).fhir_base}/.well-known/smart-configuration"
    )

    assert "code_challenge_methods_supported" not in cerner
    assert generic["code_challenge_methods_supported"] == ["S256"]


async def test_well_known_can_be_missing(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    sandbox.tenant(GENERIC_TENANT).policy.well_known = False
    base = sandbox.urls(GENERIC_TENANT).fhir_base

    missing, _ = await _get(http, f"{base}/.well-known/smart-configuration")
    metadata, _ = await _get(http, f"{base}/metadata")

    assert missing == 404
    assert metadata == 200


@pytest.mark.parametrize(
    ("syntax", "present", "absent"),
    [
        ("v1", "permission-v1", "permission-v2"),
        ("v2", "permission-v2", "permission-v1"),
    ],
)
async def test_permission_versions_follow_the_scope_syntax(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, syntax: str, present: str, absent: str
) -> None:
    policy = sandbox.tenant(GENERIC_TENANT).policy
    policy.scope_syntax = syntax  # type: ignore[assignment]

    _, doc = await _get(
        http, f"{sandbox.urls(GENERIC_TENANT).fhir_base}/.well-known/smart-configuration"
    )

    assert present in doc["capabilities"]
    assert absent not in doc["capabilities"]
    suffix = ".read" if syntax == "v1" else ".rs"
    assert f"patient/Observation{suffix}" in doc["scopes_supported"]
    assert all(not s.startswith("patient/") or s.endswith(suffix) for s in doc["scopes_supported"])


async def test_both_syntaxes_and_wildcards(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    _, generic = await _get(
        http, f"{sandbox.urls(GENERIC_TENANT).fhir_base}/.well-known/smart-configuration"
    )
    _, cerner = await _get(
        http, f"{sandbox.urls(CERNER_TENANT).fhir_base}/.well-known/smart-configuration"
    )

    assert {"permission-v1", "permission-v2"} <= set(generic["capabilities"])
    assert {"patient/*.read", "patient/Observation.rs", "offline_access"} <= set(
        generic["scopes_supported"]
    )
    assert "patient/*.read" not in cerner["scopes_supported"]


async def test_capability_statement(sandbox: RunningSandbox, http: aiohttp.ClientSession) -> None:
    urls = sandbox.urls(CERNER_TENANT)

    async with http.get(f"{urls.fhir_base}/metadata") as response:
        statement = await response.json(content_type=None)
        content_type = response.content_type

    assert response.status == 200
    assert content_type == "application/fhir+json"
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    rest = statement["rest"][0]
    service = rest["security"]["service"][0]["coding"][0]
    assert service["code"] == "SMART-on-FHIR"
    extension = next(e for e in rest["security"]["extension"] if e["url"] == OAUTH_URIS)
    uris = {e["url"]: e["valueUri"] for e in extension["extension"]}
    assert uris == {
        "authorize": urls.authorize,
        "token": urls.token,
        "revoke": urls.revoke,
        "introspect": urls.introspect,
    }
    resources = {r["type"]: [p["name"] for p in r["searchParam"]] for r in rest["resource"]}
    # Millennium's R4 API has no ImagingStudy, and no Provenance search per patient.
    assert set(resources) == set(SERVED_TYPES) - {"ImagingStudy"}
    assert "patient" in resources["Observation"]
    assert resources["Provenance"] == ["target"]
    # Cerner documents _lastUpdated on a few types only.
    assert "_lastUpdated" in resources["Observation"]
    assert "_lastUpdated" not in resources["Immunization"]


async def test_epic_capability_statement_has_no_last_updated(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    _, statement = await _get(http, f"{sandbox.urls(EPIC_TENANT).fhir_base}/metadata")

    names = {p["name"] for r in statement["rest"][0]["resource"] for p in r["searchParam"]}
    assert "_lastUpdated" not in names
    assert "patient" in names


async def test_the_generic_capability_statement_offers_every_us_core_type(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    _, statement = await _get(http, f"{sandbox.urls(GENERIC_TENANT).fhir_base}/metadata")

    resources = {
        r["type"]: [p["name"] for p in r["searchParam"]] for r in statement["rest"][0]["resource"]
    }
    assert set(resources) == set(SERVED_TYPES)
    assert set(DEFAULT_RESOURCE_TYPES) <= set(resources)
    assert all("patient" in resources[t] for t in DEFAULT_RESOURCE_TYPES if t != "Patient")


async def test_discovery_of_unknown_tenant_or_wrong_vendor_shape_is_404(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    unknown, _ = await _get(http, f"{sandbox.origin}/fhir/nope/.well-known/smart-configuration")
    wrong_shape, _ = await _get(http, f"{sandbox.origin}/r4/{GENERIC_TENANT}/metadata")
    wrong_shape_wk, _ = await _get(
        http, f"{sandbox.origin}/epic/{CERNER_TENANT}/api/FHIR/R4/.well-known/smart-configuration"
    )

    assert (unknown, wrong_shape, wrong_shape_wk) == (404, 404, 404)


async def test_cerner_urls_have_the_documented_shapes(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    """The Cerner-shaped tenant's discovered URLs are Oracle Health's path shapes, literally."""
    origin = sandbox.origin
    host = sandbox.tenant(CERNER_TENANT).host
    smart = f"{origin}/tenants/{CERNER_TENANT}/protocols/oauth2/profiles/smart-v1"
    hosted = f"{origin}/tenants/{CERNER_TENANT}/hosts/{host}/protocols/oauth2/profiles/smart-v1"

    status, doc = await _get(http, f"{origin}/r4/{CERNER_TENANT}/.well-known/smart-configuration")
    metadata, _ = await _get(http, f"{origin}/r4/{CERNER_TENANT}/metadata")

    assert (status, metadata) == (200, 200)
    assert sandbox.urls(CERNER_TENANT).fhir_base == f"{origin}/r4/{CERNER_TENANT}"
    assert doc["authorization_endpoint"] == f"{smart}/personas/patient/authorize"
    assert doc["token_endpoint"] == f"{hosted}/token"
    assert doc["revocation_endpoint"] == f"{hosted}/token/revoke"
    assert doc["introspection_endpoint"] == f"{hosted}/token/introspect"


async def test_vendor_shapes_share_no_paths(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    """Nothing may assume a vendor's URL shape: each profile's endpoints differ from the others."""
    paths: dict[str, set[str]] = {}
    for tenant_id in (CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT):
        base = sandbox.urls(tenant_id).fhir_base
        _, doc = await _get(http, f"{base}/.well-known/smart-configuration")
        endpoints = [doc[k] for k in ("authorization_endpoint", "token_endpoint", "jwks_uri")]
        shapes = {e.replace(tenant_id, "{tenant}") for e in [base, *endpoints]}
        paths[tenant_id] = shapes
        assert len(shapes) == 4

    assert paths[CERNER_TENANT].isdisjoint(paths[EPIC_TENANT])
    assert paths[CERNER_TENANT].isdisjoint(paths[GENERIC_TENANT])
    assert paths[EPIC_TENANT].isdisjoint(paths[GENERIC_TENANT])
