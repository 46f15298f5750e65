"""SMART scopes on the client side: what to ask for, and what a grant actually covers.

Two rules from the field shape this module. Cerner silently drops ``patient/*.read``, so we always
ask for one explicit scope per resource type. And EHRs grant less than asked (or, like Epic, leave
``offline_access`` out of the returned ``scope`` while still issuing a refresh token), so every
decision downstream is taken from the *granted* scopes through :func:`grant_report`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from .discovery import SmartConfiguration

#: Scopes every connection asks for besides the resource scopes.
BASE_SCOPES: tuple[str, ...] = ("launch/patient", "openid", "fhirUser", "offline_access")

#: Resource types syncsvc knows how to sync, with what they mean to a patient.
RESOURCE_DESCRIPTIONS: dict[str, str] = {
    "Patient": "your demographics",
    "Observation": "lab results and vital signs",
    "Condition": "problems and diagnoses",
    "MedicationRequest": "medications",
    "AllergyIntolerance": "allergies",
    "Immunization": "immunizations",
    "Encounter": "visits",
    "Procedure": "procedures",
    "DiagnosticReport": "test reports",
    "DocumentReference": "clinical documents",
    "CarePlan": "care plans",
    "Goal": "health goals",
    "CareTeam": "care teams",
    "Coverage": "insurance coverage",
    "Device": "implants and medical devices",
    "MedicationDispense": "medications dispensed",
    "MedicationAdministration": "medications given to you",
    "Provenance": "where your records came from",
    "QuestionnaireResponse": "questionnaire answers",
    "RelatedPerson": "family members and contacts",
    "ServiceRequest": "orders and referrals",
    "Specimen": "lab specimens",
    "ImagingStudy": "imaging studies",
}
#: What a new tenant asks for when the operator names nothing: every patient-compartment type
#: of US Core 6.1 (Patient first), then ImagingStudy and MedicationAdministration. Types the
#: tenant's server does not offer are ``unsupported`` there (see ``syncsvc.sync.type_support``).
DEFAULT_RESOURCE_TYPES: tuple[str, ...] = (
    "Patient",
    "AllergyIntolerance",
    "Condition",
    "Observation",
    "MedicationRequest",
    "Immunization",
    "Procedure",
    "Encounter",
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
_CANONICAL_TYPES = {name.lower(): name for name in RESOURCE_DESCRIPTIONS}

_RESOURCE_SCOPE = re.compile(
    r"^(?P<context>patient|user|system)/(?P<type>\*|[a-z][a-z0-9]*)\.(?P<perm>read|write|\*|[cruds]+)"
    r"(?:\?(?P<query>.*))?$",
    re.IGNORECASE,
)

Syntax = Literal["v1", "v2"]


@dataclass(frozen=True)
class ResourceScope:
    """A parsed resource scope (``patient/Observation.read``, ``patient/*.rs`` ...)."""

    context: str
    resource_type: str  # canonical spelling where known, ``*`` for a wildcard
    permissions: str
    syntax: Syntax
    query: str | None = None

    def permits_reading(self) -> bool:
        """Whether this scope lets syncsvc read and search its type."""
        if self.syntax == "v1":
            return self.permissions in ("read", "*")
        return "r" in self.permissions or "s" in self.permissions


def parse_scope(scope: str) -> ResourceScope | None:
    """The resource scope ``scope`` denotes (case-insensitively), or ``None``."""
    match = _RESOURCE_SCOPE.match(scope.strip())
    if match is None:
        return None
    perm = match["perm"].lower()
    syntax: Syntax = "v1" if perm in ("read", "write", "*") else "v2"
    raw_type = match["type"]
    resource_type = "*" if raw_type == "*" else _CANONICAL_TYPES.get(raw_type.lower(), raw_type)
    return ResourceScope(
        context=match["context"].lower(),
        resource_type=resource_type,
        permissions=perm,
        syntax=syntax,
        query=match["query"],
    )


def split_scope_string(scope: str | None) -> list[str]:
    """The scopes of a space-separated scope string, in order, without duplicates."""
    seen: dict[str, None] = {}
    for item in (scope or "").split():
        seen.setdefault(item, None)
    return list(seen)


def preferred_syntax(config: SmartConfiguration) -> Syntax:
    """v1 where the server accepts it (widest support), v2 where it only speaks v2."""
    caps = set(config.capabilities)
    if "permission-v2" in caps and "permission-v1" not in caps:
        return "v2"
    if config.scopes_supported:
        parsed = [parse_scope(s) for s in config.scopes_supported]
        syntaxes = {p.syntax for p in parsed if p is not None}
        if syntaxes == {"v2"}:
            return "v2"
    return "v1"


def _advertised_types(config: SmartConfiguration) -> set[str] | None:
    """Types the server lists explicit resource scopes for, or ``None`` if it lists none."""
    if not config.scopes_supported:
        return None
    types = {
        p.resource_type
        for p in (parse_scope(s) for s in config.scopes_supported)
        if p is not None and p.context == "patient"
    }
    if not types or "*" in types:
        return None
    return types


def _lists_scope_for(config: SmartConfiguration, resource_type: str) -> bool:
    """Whether the server's ``scopes_supported`` names a patient scope for the type (or all)."""
    for scope in config.scopes_supported or ():
        parsed = parse_scope(scope)
        if (
            parsed is not None
            and parsed.context == "patient"
            and parsed.resource_type in ("*", resource_type)
        ):
            return True
    return False


def plan_scopes(
    resource_types: Iterable[str],
    config: SmartConfiguration,
    *,
    referenced: Iterable[str] = (),
) -> list[str]:
    """The scopes to request: the base scopes plus one explicit read scope per wanted type.

    Types the server advertises no scope for are left out rather than requested in vain. The
    ``referenced`` types (Practitioner, Location ... a record names) are asked for only where
    ``scopes_supported`` lists them: they are extras, never worth a refused launch.
    """
    syntax = preferred_syntax(config)
    advertised = _advertised_types(config)
    scopes = list(BASE_SCOPES)
    extras = [t for t in referenced if _lists_scope_for(config, t)]
    for resource_type in dict.fromkeys([*resource_types, *extras]):
        if advertised is not None and resource_type not in advertised:
            continue
        suffix = "read" if syntax == "v1" else "rs"
        scopes.append(f"patient/{resource_type}.{suffix}")
    return scopes


def covered_types(granted: Iterable[str], candidates: Iterable[str]) -> list[str]:
    """Which of ``candidates`` the granted scopes let syncsvc read, in candidate order."""
    readable: set[str] = set()
    wildcard = False
    for raw in granted:
        scope = parse_scope(raw)
        if scope is None or scope.context not in ("patient", "user"):
            continue
        if not scope.permits_reading():
            continue
        if scope.resource_type == "*":
            wildcard = True
        readable.add(scope.resource_type)
    return [t for t in candidates if wildcard or t in readable]


@dataclass(frozen=True)
class GrantReport:
    """What was asked, what was granted, and what that means for syncing."""

    requested: tuple[str, ...]
    granted: tuple[str, ...]
    trimmed: tuple[str, ...]
    synced_types: tuple[str, ...]
    #: Whether background sync is possible: ``offline_access`` granted, or a refresh token issued
    #: anyway (Epic omits ``offline_access`` from ``scope`` while issuing one).
    offline: bool


def grant_report(
    requested: Iterable[str], granted: Iterable[str], *, has_refresh_token: bool
) -> GrantReport:
    """Compare the requested and the granted scopes of one launch or refresh."""
    requested_list = list(dict.fromkeys(requested))
    granted_list = list(dict.fromkeys(granted))
    granted_lower = {g.lower() for g in granted_list}
    offline = has_refresh_token or "offline_access" in granted_lower
    wanted_types = [
        p.resource_type
        for p in (parse_scope(s) for s in requested_list)
        if p is not None and p.resource_type != "*"
    ]
    synced = covered_types(granted_list, wanted_types)
    trimmed: list[str] = []
    for scope in requested_list:
        parsed = parse_scope(scope)
        if parsed is not None and parsed.resource_type != "*":
            if parsed.resource_type not in synced:
                trimmed.append(scope)
        elif scope.lower() == "offline_access":
            if not offline:
                trimmed.append(scope)
        elif scope.lower() not in granted_lower:
            trimmed.append(scope)
    return GrantReport(
        requested=tuple(requested_list),
        granted=tuple(granted_list),
        trimmed=tuple(trimmed),
        synced_types=tuple(synced),
        offline=offline,
    )


def explain_trimmed(report: GrantReport) -> list[str]:
    """Plain-language sentences about what the EHR did not grant and what that means."""
    sentences: list[str] = []
    for scope in report.trimmed:
        parsed = parse_scope(scope)
        if parsed is not None:
            what = RESOURCE_DESCRIPTIONS.get(parsed.resource_type, parsed.resource_type)
            sentences.append(
                f"Access to {what} ({parsed.resource_type}) was not granted, so they will not sync."
            )
        elif scope == "offline_access":
            sentences.append(
                "Offline access was not granted, so syncsvc cannot keep your record up to date "
                "in the background; you would need to reconnect each time."
            )
        elif scope == "launch/patient":
            sentences.append("The EHR did not confirm which patient record was chosen.")
        elif scope in ("openid", "fhirUser"):
            sentences.append(
                f"The '{scope}' permission was not granted, so your identity could not be "
                "confirmed by the EHR's sign-in."
            )
        else:
            sentences.append(f"The permission '{scope}' was not granted.")
    return sentences
