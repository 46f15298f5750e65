"""SMART scopes on the client side: what to ask for, and what a grant actually covers.

Two rules from the field shape this module. Cerner silently drops ``patient/*.read``, so we always
ask for one explicit scope per resource type. And EHRs grant less than asked (or, like Epic, leave
``offline_access`` out of the returned ``scope`` while still issuing a refresh token), so every
decision downstream is taken from the *granted* scopes through :func:`grant_report`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from . import scope_grammar
from .discovery import SmartConfiguration
from .scope_grammar import Grant, ResourceScope, Syntax, TypeGrant

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
#: Types read only through what links to them, never searched: their scopes are asked for
#: beside the types that need them (a document's contents are ``Binary`` at Cerner and Epic).
READ_BY_LINK: dict[str, tuple[str, str]] = {
    "Binary": ("the contents of clinical documents", "DocumentReference DiagnosticReport"),
}
_CANONICAL_TYPES = {name.lower(): name for name in RESOURCE_DESCRIPTIONS}
#: Distinct grants kept read (see ``_read_grant``): a tenant's connections mostly share a few.
GRANTS_REMEMBERED = 4096


def parse_scope(scope: str) -> ResourceScope | None:
    """The resource scope ``scope`` denotes (type names case-insensitively), or ``None``."""
    return scope_grammar.parse(scope, _CANONICAL_TYPES)


def read_grant(scopes: Iterable[str]) -> Grant:
    """A grant's scopes read into resource scopes (see :mod:`syncsvc.smart.scope_grammar`)."""
    return _read_grant(tuple(scopes))


@functools.lru_cache(maxsize=GRANTS_REMEMBERED)
def _read_grant(scopes: tuple[str, ...]) -> Grant:
    # A grant is read several times in every sync (the plan, the type states, the readable
    # types), and most connections of a tenant hold the same few: each is parsed once. A Grant
    # is immutable, so the one read is shared.
    return scope_grammar.read_grant(scopes, _CANONICAL_TYPES)


def type_grants(granted: Iterable[str], candidates: Sequence[str]) -> dict[str, TypeGrant]:
    """Which of ``candidates`` the granted scopes let syncsvc sync, each whole or in parts."""
    return scope_grammar.grant_types(read_grant(granted), candidates)


def split_scope_string(scope: str | None) -> list[str]:
    """The scopes of a space-separated scope string, in order, without duplicates."""
    seen: dict[str, None] = {}
    for item in (scope or "").split():
        seen.setdefault(item, None)
    return list(seen)


def preferred_syntax(config: SmartConfiguration, choice: str = "auto") -> Syntax:
    """The scope syntax to ask in: the operator's ``choice``, or for ``auto`` the server's.

    ``auto`` asks in v2 where the server advertises ``permission-v2`` (SMART App Launch 2.x: v2
    scopes can be granted in parts, and v1 is kept only for backward compatibility), and in v1
    where it advertises only ``permission-v1``. A server that advertises neither is judged by
    its ``scopes_supported``: v2 only if every resource scope listed is v2.
    """
    if choice in ("v1", "v2"):
        return "v2" if choice == "v2" else "v1"
    caps = set(config.capabilities)
    if "permission-v2" in caps:
        return "v2"
    if "permission-v1" in caps:
        return "v1"
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
    syntax_choice: str = "auto",
    *,
    referenced: Iterable[str] = (),
) -> list[str]:
    """The scopes to request: the base scopes plus one explicit read scope per wanted type.

    Types the server advertises no scope for are left out rather than requested in vain;
    ``syntax_choice`` is the tenant's (see :func:`preferred_syntax`). The ``referenced`` types
    (Practitioner, Location ... a record names) are asked for only where ``scopes_supported``
    lists them: they are extras, never worth a refused launch.
    """
    syntax = preferred_syntax(config, syntax_choice)
    advertised = _advertised_types(config)
    scopes = list(BASE_SCOPES)
    extras = [t for t in referenced if _lists_scope_for(config, t)]
    wanted = list(dict.fromkeys([*resource_types, *extras]))
    for linked, (_, needed_by) in READ_BY_LINK.items():
        if any(t in needed_by.split() for t in wanted):
            wanted.append(linked)
    for resource_type in dict.fromkeys(wanted):
        if advertised is not None and resource_type not in advertised:
            continue
        suffix = "read" if syntax == "v1" else "rs"
        scopes.append(f"patient/{resource_type}.{suffix}")
    return scopes


def covered_types(granted: Iterable[str], candidates: Iterable[str]) -> list[str]:
    """Which of ``candidates`` the granted scopes let syncsvc sync (wholly or in part), in order.

    Syncing a type searches it (``s``); the Patient is read by id (``r``).
    """
    return list(type_grants(granted, list(candidates)))


def readable_by_id(granted: Iterable[str], candidates: Iterable[str]) -> list[str]:
    """Which of ``candidates`` the granted scopes let syncsvc read by id, in order.

    Shared resources a record names and a document's Binary are read by id (``r``), which a
    search grant (``s``) does not give. A read scope narrowed by a query cannot promise that an
    id named elsewhere lies within it, so only a whole type counts.
    """
    grant = read_grant(granted)
    return [
        resource_type
        for resource_type in candidates
        if (found := grant.type_grant(resource_type, "r")) is not None and found.whole
    ]


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
    #: Granted scopes shaped like resource scopes that break the grammar: ignored, grant nothing.
    malformed: tuple[str, ...] = ()


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
        malformed=read_grant(granted_list).malformed,
    )


def explain_trimmed(report: GrantReport) -> list[str]:
    """Plain-language sentences about what the EHR did not grant and what that means."""
    sentences: list[str] = []
    for scope in report.trimmed:
        parsed = parse_scope(scope)
        if parsed is not None:
            linked = READ_BY_LINK.get(parsed.resource_type)
            what = linked[0] if linked else RESOURCE_DESCRIPTIONS.get(parsed.resource_type)
            what = what or parsed.resource_type
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
