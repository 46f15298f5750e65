"""Configuration of the sandbox EHR: tenants, vendor profiles, client registrations, policies.

Everything here is plain data. Policies and faults are mutable on purpose: the sandbox's admin API
changes them at run time so a test can flip a switch between two requests.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from .referenced import REFERENCED_TYPES

_SNOMED = "http://snomed.info/sct"

Vendor = Literal["cerner", "epic", "generic"]
ClientAuth = Literal["public", "client_secret_basic", "client_secret_post", "private_key_jwt"]
PkceMode = Literal["required", "accepted", "ignored"]
ScopeSyntax = Literal["v1", "v2", "both"]
RefreshMode = Literal["none", "rolling", "indefinite", "strict_rotation"]

#: The patient-compartment resource types the sandbox serves (plus Patient and Binary).
COMPARTMENT_TYPES: tuple[str, ...] = (
    "Observation",
    "Condition",
    "MedicationRequest",
    "AllergyIntolerance",
    "Immunization",
    "Encounter",
    "Procedure",
    "DiagnosticReport",
    "DocumentReference",
    "CarePlan",
    "Goal",
    "CareTeam",
    "Coverage",
    "Device",
    "MedicationDispense",
    "Provenance",
    "QuestionnaireResponse",
    "RelatedPerson",
    "ServiceRequest",
    "Specimen",
    "ImagingStudy",
    "MedicationAdministration",
)
SERVED_TYPES: tuple[str, ...] = ("Patient", *COMPARTMENT_TYPES, *REFERENCED_TYPES, "Binary")


@dataclass
class ClientRegistration:
    """An application registered with the sandbox's authorization server."""

    client_id: str
    auth: ClientAuth = "public"
    redirect_uris: list[str] = field(default_factory=list)
    #: Scopes this client is registered for; ``None`` means "anything the tenant supports".
    scopes: list[str] | None = None
    secret: str | None = None
    #: For ``private_key_jwt``: where the sandbox fetches the client's JWKS, or the JWKS inline.
    jwks_url: str | None = None
    jwks: dict[str, Any] | None = None
    #: Cerner registers an application for one persona; a provider app used for a patient
    #: launch gets ``client-persona-mismatch``.
    persona: Literal["patient", "provider"] = "patient"
    #: Tenants this client may be used with; empty means every tenant.
    tenants: list[str] = field(default_factory=list)
    #: How the application is registered to start: a standalone launch of an app registered
    #: for launch from inside the EHR only gets no patient context (Cerner: missing-patient).
    launch: Literal["standalone", "ehr"] = "standalone"


@dataclass
class TenantPolicy:
    """Switches that make one tenant behave like a particular real deployment."""

    # Discovery
    well_known: bool = True
    advertise_code_challenge_methods: bool = True
    # Authorization
    pkce: PkceMode = "required"
    #: RFC 9207: advertise ``authorization_response_iss_parameter_supported`` in discovery, and
    #: (separately, so a test can advertise without sending) put ``iss`` in every authorize
    #: redirect.
    advertise_response_iss: bool = False
    send_response_iss: bool = False
    #: A hostile tenant mounting a mix-up attack (RFC 9207 §1): its authorize endpoint forwards
    #: the browser to this sandbox tenant's authorize endpoint with the client's own ``state``,
    #: ``code_challenge`` and ``nonce``, as ``forward_client_id`` (the client's id at the honest
    #: tenant) with ``forward_redirect_uri`` (the redirect URI registered there).
    forward_authorize_to: str | None = None
    forward_client_id: str | None = None
    forward_redirect_uri: str | None = None
    #: Patient id picked without a login page (headless tests, demo, benchmarks); ``None`` shows
    #: the login + consent page.
    auto_approve_patient: str | None = None
    # Scope policy: granted = requested ∩ registered ∩ policy
    wildcards_supported: bool = True
    scope_syntax: ScopeSyntax = "both"
    #: When set, nothing outside this list is ever granted (production tenants seen granting
    #: only ``openid fhirUser launch online_access``).
    trim_to: list[str] | None = None
    drop_offline_for_public: bool = False
    #: Epic: a refresh token is issued but ``offline_access`` is missing from ``scope``.
    hide_offline_access_in_scope: bool = False
    #: A registration change that has not reached this tenant: these scopes are silently dropped.
    missing_scopes: list[str] = field(default_factory=list)
    #: Granular consent (SMART v2): a type listed here is granted only for these categories
    #: (``system|code``), as one ``patient/Type.rs?category=...`` scope each, however it was asked
    #: (v1, v2, qualified or not). Wildcard scopes are not narrowed.
    granted_categories: dict[str, list[str]] = field(default_factory=dict)
    #: A registration change that reaches the tenant after the launch: each refresh grants what
    #: the patient approved and the policy allows now, so a grant can widen again (without
    #: this, a scope narrowed away at a refresh stays away).
    widen_on_refresh: bool = False
    # Tokens
    access_token_lifetime: int = 3600
    refresh_mode: RefreshMode = "none"
    #: Absolute lifetime of a grant's refresh token in seconds (``None``: no limit).
    refresh_absolute_lifetime: int | None = None
    #: A grant unused for this long is revoked (Cerner: about three months).
    refresh_idle_limit: int | None = None
    #: Refreshing one grant more often than this is throttled (Cerner: once a minute).
    refresh_min_interval: int = 0
    #: Include a ``tenant`` field in the token response (Cerner does).
    token_response_tenant: bool = True
    #: A gateway wired to the wrong tenant: the token response's ``tenant`` and the access
    #: token's tenant claims name this tenant id instead, so the FHIR server answers every
    #: request with tenant-mismatch (what a token issued for another tenant gets at Cerner).
    issue_tokens_for_tenant: str | None = None
    #: Name the patient in the code exchange's token response (a server that forgets to, as
    #: seen with registrations lacking patient context, leaves the client guessing).
    token_response_patient: bool = True
    #: Opaque access tokens and no ``tenant`` in the token response: nothing the client can
    #: read names the tenant, so a misbound grant only shows as the FHIR server's 401.
    opaque_tokens: bool = False
    #: A refresh response that names this patient instead of the grant's own (a server mixing
    #: up grants): the client must notice before it uses the token.
    refresh_names_patient: str | None = None
    # FHIR search rules
    count_defaults: dict[str, int] = field(default_factory=dict)
    count_maxima: dict[str, int] = field(default_factory=dict)
    default_count: int = 50
    max_count: int = 200
    #: Types on which ``_lastUpdated`` is accepted; others answer 400.
    last_updated_types: list[str] = field(default_factory=lambda: list(SERVED_TYPES))
    #: Types that must be searched with a ``category`` (value: the accepted categories, each a
    #: ``code`` taken in any system or a ``system|code`` taken bare or in that system only).
    required_categories: dict[str, list[str]] = field(default_factory=dict)
    # Documents
    #: Generated notes and report texts are padded to about this many characters (0: as
    #: written), so a benchmark can size the documents it fetches.
    document_bytes: int = 0
    #: Shared types (Practitioner, Location ...) searchable by ``_id`` (a comma-separated list);
    #: the others are served by read only.
    id_search_types: list[str] = field(default_factory=lambda: list(REFERENCED_TYPES))
    #: Types this deployment does not offer at all: left out of its CapabilityStatement and
    #: ``scopes_supported``, and answered 404 like any unknown type.
    unserved_types: list[str] = field(default_factory=list)
    #: Types it serves by id but cannot search per patient (the CapabilityStatement lists no
    #: patient parameter for them): a patient search answers 400 the way the vendor does.
    unsearchable_types: list[str] = field(default_factory=list)
    #: Whether ``Patient/{id}/$everything`` is offered (and advertised) here.
    everything: bool = False
    #: Answer every Binary read with the FHIR Binary resource, whatever ``Accept`` asks (a
    #: server that ignores it).
    binary_as_resource: bool = False


@dataclass
class FaultSpec:
    """One injected fault. Applies to matching requests ``count`` times, or at ``rate``."""

    kind: Literal[
        "latency",
        "status_500",
        "status_502",
        "status_503",
        "status_504",
        "throttle",
        "throttle_no_retry_after",
        "reset",
        "malformed_json",
        "truncated",
        "reset_mid_body",
        "next_self",
        "next_foreign",
        "next_escape",
        "empty_last_page_with_next",
        "foreign_patient_entry",
        "token_outage",
        "epic_merged_400_html",
        "bad_request_diagnostics",
        "oversized_page",
    ]
    #: Which requests: ``fhir`` (any FHIR request), a resource type name, ``token`` or ``revoke``.
    target: str = "fhir"
    count: int | None = None
    rate: float | None = None
    latency_ms: int = 0
    #: Seconds of the ``Retry-After`` a ``throttle`` sends (and a 5xx, with ``with_retry_after``).
    retry_after: int = 1
    #: For ``bad_request_diagnostics``: the OperationOutcome's diagnostics text (any size).
    diagnostics: str | None = None
    #: For ``next_escape``: the path after the FHIR base of the next link (``/..;/admin``).
    next_path: str | None = None
    #: Whether a ``status_5xx`` answer carries ``Retry-After: {retry_after}``.
    with_retry_after: bool = False
    #: Only requests made with this patient's token (``None``: every patient's). A patient's
    #: fault is consulted once the token is checked, so it never fires on a refused request.
    patient: str | None = None
    #: ``oversized_page``: the size the page is padded to, streamed without a Content-Length.
    size_bytes: int = 0


@dataclass
class PatientSpec:
    """A synthetic patient and how many resources of each type it has."""

    id: str
    given: str
    family: str
    birth_date: str = "1970-01-01"
    gender: Literal["male", "female", "other", "unknown"] = "unknown"
    #: Resource counts per type; types missing here get the generator's default.
    sizes: dict[str, int] = field(default_factory=dict)
    #: Portal login name and password for the login page.
    username: str = ""
    password: str = "portal"  # noqa: S105 - sandbox-only demo credential, documented as such
    #: This persona's consent at the EHR: the categories of each listed type it shares (as the
    #: tenant policy's ``granted_categories``, which it overrides type by type).
    granted_categories: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class TenantConfig:
    """One EHR tenant: its id (a path segment), vendor profile, host name and policies."""

    id: str
    name: str
    vendor: Vendor = "generic"
    #: Cerner's token endpoint and tokens name a host; tokens of one host are refused on another.
    host: str = "fhir-sandbox"
    policy: TenantPolicy = field(default_factory=TenantPolicy)
    faults: list[FaultSpec] = field(default_factory=list)
    patients: list[PatientSpec] = field(default_factory=list)


@dataclass
class SandboxConfig:
    """The whole sandbox: tenants, client registrations and the data seed."""

    tenants: list[TenantConfig]
    clients: list[ClientRegistration]
    seed: int = 20261122
    #: Size of the request log ring buffer.
    request_log_size: int = 100_000
    #: RSA private key (PEM) the sandbox signs tokens with; generated at start when absent.
    signing_key_pem: str | None = None

    def tenant(self, tenant_id: str) -> TenantConfig | None:
        """The tenant with this id, or ``None``."""
        return next((t for t in self.tenants if t.id == tenant_id), None)

    def client(self, client_id: str) -> ClientRegistration | None:
        """The client registration with this id, or ``None``."""
        return next((c for c in self.clients if c.client_id == client_id), None)


def vendor_policy(vendor: Vendor, **overrides: Any) -> TenantPolicy:
    """A policy with the documented defaults of a vendor, adjusted by ``overrides``."""
    if vendor == "cerner":
        base = TenantPolicy(
            advertise_code_challenge_methods=False,
            wildcards_supported=False,
            access_token_lifetime=570,
            refresh_mode="none",
            refresh_idle_limit=90 * 24 * 3600,
            refresh_min_interval=60,
            count_defaults={"Observation": 50, "DocumentReference": 10},
            count_maxima={"Observation": 200, "DocumentReference": 100},
            default_count=20,
            max_count=100,
            last_updated_types=["Observation", "DocumentReference", "Condition", "Encounter"],
            required_categories={"CarePlan": ["assess-plan"]},
            # Millennium searches Practitioner, Organization and Location by ``_id``; it has
            # no PractitionerRole or Medication search.
            id_search_types=["Practitioner", "Organization", "Location"],
            # Millennium's R4 API has no ImagingStudy, and serves Provenance by _id or target.
            unserved_types=["ImagingStudy"],
            unsearchable_types=["Provenance"],
        )
    elif vendor == "epic":
        base = TenantPolicy(
            pkce="accepted",
            drop_offline_for_public=True,
            hide_offline_access_in_scope=True,
            access_token_lifetime=3600,
            refresh_mode="rolling",
            token_response_tenant=False,
            default_count=100,
            max_count=1000,
            last_updated_types=[],
            # Reads only: the shape of a server whose CapabilityStatement lists no ``_id``.
            id_search_types=[],
            required_categories={
                "Observation": [
                    "laboratory",
                    "vital-signs",
                    "social-history",
                    "survey",
                    "imaging",
                    "exam",
                ],
                # SNOMED CT: longitudinal, encounter-level, outpatient and dental care plans.
                # Epic takes the codes only, never words like ``longitudinal``.
                "CarePlan": [
                    f"{_SNOMED}|38717003",
                    f"{_SNOMED}|734163000",
                    f"{_SNOMED}|736271009",
                    f"{_SNOMED}|738906000",
                ],
            },
            # Epic reads Provenance by id (or with _revinclude); it has no Provenance search.
            unsearchable_types=["Provenance"],
        )
    else:
        # The generic shape follows the current specs, RFC 9207's iss parameter included.
        base = TenantPolicy(advertise_response_iss=True, send_response_iss=True, everything=True)
    return dataclasses.replace(base, **overrides)


def default_config(redirect_uris: list[str] | None = None) -> SandboxConfig:
    """Three tenants (Cerner-, Epic- and generic-shaped) with demo patients and demo clients."""
    # The shared callback of earlier syncsvc releases, and the per-tenant ones of the demo names.
    redirects = list(
        redirect_uris
        or [
            "http://127.0.0.1:8000/callback",
            *(f"http://127.0.0.1:8000/callback/{name}" for name in ("cerner", "epic", "generic")),
        ]
    )
    patients = [
        PatientSpec(
            id="12724066",
            given="Nancy",
            family="Smart",
            birth_date="1990-09-15",
            gender="female",
            username="nancysmart",
        ),
        PatientSpec(
            id="12742400",
            given="Wilma",
            family="Smart",
            birth_date="1947-05-26",
            gender="female",
            username="wilmasmart",
            sizes={"Observation": 400},
        ),
        PatientSpec(
            id="12457977",
            given="Timmy",
            family="Smart",
            birth_date="2012-02-05",
            gender="male",
            username="timmysmart",
        ),
    ]
    tenants = [
        TenantConfig(
            id="ec2458f2-1e24-41c8-b71b-0e701af7583d",
            name="Oracle Health Sandbox (Cerner-shaped)",
            vendor="cerner",
            host="fhir-myrecord.sandbox",
            policy=vendor_policy("cerner"),
            patients=patients,
        ),
        TenantConfig(
            id="epic-sandbox",
            name="Epic-shaped Sandbox",
            vendor="epic",
            host="fhir.epic.sandbox",
            policy=vendor_policy("epic"),
            patients=patients,
        ),
        TenantConfig(
            id="generic",
            name="Generic SMART Sandbox",
            vendor="generic",
            policy=vendor_policy("generic"),
            patients=patients,
        ),
    ]
    clients = [
        ClientRegistration(client_id="syncsvc-public", auth="public", redirect_uris=redirects),
        ClientRegistration(
            client_id="syncsvc-confidential",
            auth="client_secret_basic",
            secret="sandbox-secret",  # noqa: S106 - sandbox-only demo credential
            redirect_uris=redirects,
        ),
    ]
    return SandboxConfig(tenants=tenants, clients=clients)


def _build(cls: type[Any], raw: dict[str, Any]) -> Any:
    """Build a dataclass from a JSON object, recursing into the nested config dataclasses."""
    nested: dict[str, type[Any]] = {"policy": TenantPolicy}
    list_nested: dict[str, type[Any]] = {
        "faults": FaultSpec,
        "patients": PatientSpec,
        "tenants": TenantConfig,
        "clients": ClientRegistration,
    }
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key in nested and isinstance(value, dict):
            kwargs[key] = _build(nested[key], value)
        elif key in list_nested and isinstance(value, list):
            kwargs[key] = [_build(list_nested[key], item) for item in value]
        else:
            kwargs[key] = value
    return cls(**kwargs)


def load_config(path: Path) -> SandboxConfig:
    """Read a sandbox configuration from a JSON file (same shape as these dataclasses)."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the configuration must be a JSON object")
    tenants = raw.get("tenants")
    if not isinstance(tenants, list) or not tenants:
        raise ValueError(f"{path}: 'tenants' must be a non-empty list")
    for tenant in tenants:
        if not isinstance(tenant, dict):
            raise ValueError(f"{path}: every tenant must be a JSON object")
        vendor = tenant.get("vendor", "generic")
        if vendor not in get_args(Vendor):
            raise ValueError(f"{path}: tenant vendor must be one of {get_args(Vendor)}")
        policy_overrides = tenant.get("policy", {})
        if not isinstance(policy_overrides, dict):
            raise ValueError(f"{path}: a tenant's 'policy' must be a JSON object")
        # Overrides apply on top of the vendor's documented defaults, as in ``vendor_policy``.
        tenant["policy"] = dataclasses.asdict(vendor_policy(vendor)) | policy_overrides
    config: SandboxConfig = _build(SandboxConfig, raw)
    ids = [t.id for t in config.tenants]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: tenant ids must be unique")
    return config
