"""SMART discovery documents of each sandbox tenant.

``{base}/.well-known/smart-configuration`` (SMART App Launch 2.x) and ``{base}/metadata``, a FHIR R4
CapabilityStatement carrying the endpoints in the ``oauth-uris`` security extension (the pre-2.0
way). Policy switches reproduce deployments that publish no well-known document, or a well-known
document without ``code_challenge_methods_supported`` (Cerner's published example).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .config import SERVED_TYPES, TenantConfig, TenantPolicy, Vendor
from .everything import OPERATION_DEFINITION, OPERATION_NAME
from .profiles import ROUTE_TEMPLATES
from .referenced import REFERENCED_TYPES
from .scope_policy import KNOWN_SCOPES
from .state import SandboxState

OAUTH_URIS_EXTENSION = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
FHIR_JSON = "application/fhir+json"

#: Search parameters of each served type, ``_lastUpdated`` excepted (it depends on the policy).
SEARCH_PARAMS: dict[str, tuple[str, ...]] = {
    "Patient": ("_id", "identifier", "name", "family", "given", "birthdate", "gender"),
    "Observation": ("patient", "subject", "category", "code", "date"),
    "Condition": ("patient", "subject", "category", "clinical-status"),
    "MedicationRequest": ("patient", "subject", "status", "intent"),
    "AllergyIntolerance": ("patient", "clinical-status"),
    "Immunization": ("patient", "date"),
    "Encounter": ("patient", "subject", "date"),
    "Procedure": ("patient", "subject", "date"),
    "DiagnosticReport": ("patient", "subject", "category", "code", "date"),
    "DocumentReference": ("patient", "subject", "category", "type", "date"),
    "CarePlan": ("patient", "subject", "category"),
    "Goal": ("patient", "subject"),
    "CareTeam": ("patient", "subject", "category", "status"),
    "Coverage": ("patient", "beneficiary"),
    "Device": ("patient", "type"),
    "MedicationDispense": ("patient", "subject", "status", "type"),
    "MedicationAdministration": ("patient", "subject", "status"),
    "Provenance": ("patient", "target"),
    "QuestionnaireResponse": ("patient", "subject", "status", "authored"),
    "RelatedPerson": ("patient",),
    "ServiceRequest": ("patient", "subject", "category", "code", "authored"),
    "Specimen": ("patient", "subject", "type"),
    "ImagingStudy": ("patient", "subject", "started"),
    "Binary": (),
}
#: Parameters that name the patient; a type the tenant cannot search per patient lists none.
PATIENT_PARAMS = frozenset({"patient", "subject", "beneficiary"})

CAPABILITIES_ALWAYS: tuple[str, ...] = (
    "launch-standalone",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-standalone-patient",
    "permission-offline",
    "permission-patient",
    "sso-openid-connect",
)


def setup_routes(app: web.Application, state: SandboxState) -> None:
    """Register the discovery routes of every vendor URL shape."""
    for vendor, templates in ROUTE_TEMPLATES.items():
        base = templates["fhir_base"]
        app.router.add_get(
            f"{base}/.well-known/smart-configuration", _smart_configuration(state, vendor)
        )
        app.router.add_get(f"{base}/metadata", _metadata(state, vendor))


def _tenant_or_404(request: web.Request, state: SandboxState, vendor: Vendor) -> TenantConfig:
    tenant = state.tenant(request.match_info["tenant"])
    if tenant is None or tenant.vendor != vendor:
        raise web.HTTPNotFound
    return tenant


def _smart_configuration(state: SandboxState, vendor: Vendor) -> Any:
    async def handler(request: web.Request) -> web.Response:
        tenant = _tenant_or_404(request, state, vendor)
        if not tenant.policy.well_known:
            raise web.HTTPNotFound
        return web.json_response(smart_configuration(state, tenant))

    return handler


def _metadata(state: SandboxState, vendor: Vendor) -> Any:
    async def handler(request: web.Request) -> web.Response:
        tenant = _tenant_or_404(request, state, vendor)
        return web.json_response(capability_statement(state, tenant), content_type=FHIR_JSON)

    return handler


def smart_configuration(state: SandboxState, tenant: TenantConfig) -> dict[str, Any]:
    """The ``.well-known/smart-configuration`` document of ``tenant``."""
    urls = state.urls(tenant)
    policy = tenant.policy
    document: dict[str, Any] = {
        "issuer": urls.issuer,
        "jwks_uri": urls.jwks,
        "authorization_endpoint": urls.authorize,
        "token_endpoint": urls.token,
        "revocation_endpoint": urls.revoke,
        "introspection_endpoint": urls.introspect,
        "capabilities": capabilities(policy),
        "scopes_supported": scopes_supported(policy),
        "response_types_supported": ["code"],
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
        ],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
    }
    if policy.advertise_code_challenge_methods:
        document["code_challenge_methods_supported"] = ["S256"]
    if policy.advertise_response_iss:
        document["authorization_response_iss_parameter_supported"] = True
    return document


def capabilities(policy: TenantPolicy) -> list[str]:
    """SMART capabilities of a tenant with ``policy``."""
    versions = {"v1": ["permission-v1"], "v2": ["permission-v2"]}
    offered = [
        *CAPABILITIES_ALWAYS,
        *versions.get(policy.scope_syntax, ["permission-v1", "permission-v2"]),
    ]
    if policy.trim_to is not None and "offline_access" not in policy.trim_to:
        # A deployment that never grants offline access does not advertise it either.
        offered.remove("permission-offline")
    return offered


def scopes_supported(policy: TenantPolicy) -> list[str]:
    """Scopes a tenant advertises: launch, identity, refresh and patient resource scopes."""
    scopes = sorted(KNOWN_SCOPES)
    types = served_types(policy)
    if policy.wildcards_supported:
        types.insert(0, "*")
    for resource_type in types:
        if policy.scope_syntax in ("v1", "both"):
            scopes.append(f"patient/{resource_type}.read")
        if policy.scope_syntax in ("v2", "both"):
            scopes.append(f"patient/{resource_type}.rs")
    if policy.trim_to is not None:
        scopes = [s for s in scopes if s in policy.trim_to]
    return scopes


def capability_statement(state: SandboxState, tenant: TenantConfig) -> dict[str, Any]:
    """The FHIR R4 CapabilityStatement of ``tenant``."""
    urls = state.urls(tenant)
    oauth_uris = [
        {"url": name, "valueUri": url}
        for name, url in (
            ("authorize", urls.authorize),
            ("token", urls.token),
            ("revoke", urls.revoke),
            ("introspect", urls.introspect),
        )
    ]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-01-01",
        "kind": "instance",
        "software": {"name": f"syncsvc sandbox EHR ({tenant.vendor} profile)"},
        "implementation": {"description": tenant.name, "url": urls.fhir_base},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "extension": [{"url": OAUTH_URIS_EXTENSION, "extension": oauth_uris}],
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": (
                                        "http://terminology.hl7.org/CodeSystem/restful-security-service"
                                    ),
                                    "code": "SMART-on-FHIR",
                                }
                            ],
                            "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
                        }
                    ],
                },
                "resource": [_resource(t, tenant.policy) for t in served_types(tenant.policy)],
            }
        ],
    }


def served_types(policy: TenantPolicy) -> list[str]:
    """The types a tenant with ``policy`` offers (Patient first, Binary last)."""
    return [t for t in SERVED_TYPES if t not in policy.unserved_types]


def _resource(resource_type: str, policy: TenantPolicy) -> dict[str, Any]:
    params = list(SEARCH_PARAMS.get(resource_type, ()))
    if resource_type in policy.unsearchable_types:
        params = [p for p in params if p not in PATIENT_PARAMS]
    if params and resource_type in policy.last_updated_types:
        params.append("_lastUpdated")
    if resource_type in REFERENCED_TYPES and resource_type in policy.id_search_types:
        params.append("_id")
    interactions = [{"code": "read"}]
    if params:
        interactions.append({"code": "search-type"})
    resource: dict[str, Any] = {
        "type": resource_type,
        "interaction": interactions,
        "searchParam": [{"name": name, "type": _param_type(name)} for name in params],
    }
    if resource_type == "Patient" and policy.everything:
        resource["operation"] = [{"name": OPERATION_NAME, "definition": OPERATION_DEFINITION}]
    return resource


def _param_type(name: str) -> str:
    if name in ("patient", "subject", "beneficiary", "target"):
        return "reference"
    if name in ("date", "birthdate", "_lastUpdated", "authored", "started"):
        return "date"
    if name in ("name", "family", "given"):
        return "string"
    return "token"
