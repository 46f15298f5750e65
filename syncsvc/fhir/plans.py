"""Per-vendor query plans: how to search each resource type of one patient.

Plans are data, not code paths. Each vendor profile says which parameter names the patient, which
searches need a ``category`` (Epic refuses Observation and CarePlan searches without one; Cerner
wants ``category=assess-plan`` on CarePlan), the page size to ask for, and whether ``_lastUpdated``
may be used. A tenant may override any of it, and the CapabilityStatement decides ``_lastUpdated``
where it lists search parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from syncsvc.smart.discovery import SmartConfiguration

#: The parameter that names the patient, per FHIR R4's patient compartment definitions (and the
#: parameter US Core 6.1 searches each type by).
PATIENT_PARAM: dict[str, str] = {
    "Observation": "patient",
    "Condition": "patient",
    "MedicationRequest": "patient",
    "AllergyIntolerance": "patient",
    "Immunization": "patient",
    "Encounter": "patient",
    "Procedure": "patient",
    "DiagnosticReport": "patient",
    "DocumentReference": "patient",
    "CarePlan": "patient",
    "Goal": "patient",
    "CareTeam": "patient",
    # R4's ``patient`` on Coverage is the beneficiary (``beneficiary`` is the same search).
    "Coverage": "patient",
    "Device": "patient",
    "MedicationDispense": "patient",
    "MedicationAdministration": "patient",
    "Provenance": "patient",
    "QuestionnaireResponse": "patient",
    "RelatedPerson": "patient",
    "ServiceRequest": "patient",
    "Specimen": "patient",
    "ImagingStudy": "patient",
}


@dataclass(frozen=True)
class TypePlan:
    """How to search one resource type for one patient."""

    resource_type: str
    patient_param: str = "patient"
    count: int | None = 100
    #: Each entry is one search (with its extra parameters); several when a category is required.
    variants: tuple[Mapping[str, str], ...] = (dict[str, str](),)
    #: Whether ``_lastUpdated`` may narrow an incremental pull (``None``: ask discovery).
    last_updated: bool | None = None
    #: Why the vendor cannot search this type per patient (``None``: it can). Such a type is
    #: ``unsupported`` at the tenant, never asked for and never counted as a failure.
    unsupported: str | None = None

    def searches(self, patient_id: str) -> list[dict[str, str]]:
        """The query parameter sets for a full pull of this type."""
        base = {self.patient_param: patient_id}
        if self.count:
            base["_count"] = str(self.count)
        return [{**base, **variant} for variant in self.variants]


@dataclass(frozen=True)
class VendorPlan:
    """Plans of every type for one vendor profile."""

    vendor: str
    types: dict[str, TypePlan] = field(default_factory=dict)
    default_count: int | None = 100
    #: This tenant's caps on one page (None: the process's settings), from the ``"*"`` override.
    max_page_bytes: int | None = None
    max_page_entries: int | None = None
    #: Pull a first (full) sync through ``Patient/$everything`` where the server advertises it,
    #: per-type searches as the fallback (off unless the tenant's ``"*"`` override says so:
    #: see README, "The whole record", for the measured difference).
    everything: bool = False

    def for_type(self, resource_type: str) -> TypePlan:
        """The plan of ``resource_type`` (a generic one if the vendor says nothing special)."""
        plan = self.types.get(resource_type)
        if plan is not None:
            return plan
        return TypePlan(
            resource_type=resource_type,
            patient_param=PATIENT_PARAM.get(resource_type, "patient"),
            count=self.default_count,
        )


def _categories(*values: str) -> tuple[Mapping[str, str], ...]:
    return tuple({"category": value} for value in values)


#: Epic and Oracle Health (Cerner) serve Provenance by id, or alongside another search with
#: ``_revinclude=Provenance:target``; neither searches it per patient.
_PROVENANCE_BY_TARGET = "searched only by id or target, not per patient"

VENDOR_PLANS: dict[str, VendorPlan] = {
    "cerner": VendorPlan(
        vendor="cerner",
        default_count=100,
        types={
            # Cerner documents Observation _count up to 200 and DocumentReference up to 100.
            "Observation": TypePlan("Observation", count=200),
            "DocumentReference": TypePlan("DocumentReference", count=100),
            "CarePlan": TypePlan("CarePlan", variants=_categories("assess-plan")),
            "Provenance": TypePlan("Provenance", unsupported=_PROVENANCE_BY_TARGET),
        },
    ),
    "epic": VendorPlan(
        vendor="epic",
        default_count=100,
        types={
            "Observation": TypePlan(
                "Observation",
                variants=_categories(
                    "laboratory", "vital-signs", "social-history", "survey", "imaging", "exam"
                ),
                last_updated=False,
            ),
            # Epic tells its care plans apart by SNOMED CT category: longitudinal (38717003) and
            # encounter-level (734163000). The bare code, as Epic's own examples send it; a
            # granted ``category=<system>|<code>`` still narrows it to the qualified token.
            "CarePlan": TypePlan(
                "CarePlan", variants=_categories("38717003", "734163000"), last_updated=False
            ),
            # Epic serves problems, encounter diagnoses and health concerns as separate
            # Condition searches told apart by category; the union is the patient's conditions.
            "Condition": TypePlan(
                "Condition",
                variants=_categories("problem-list-item", "encounter-diagnosis", "health-concern"),
                last_updated=False,
            ),
            "Provenance": TypePlan("Provenance", unsupported=_PROVENANCE_BY_TARGET),
        },
    ),
    "generic": VendorPlan(vendor="generic", default_count=100),
}


#: The key of plan overrides that apply to the tenant as a whole rather than to one type.
TENANT_WIDE = "*"
_TENANT_WIDE_FIELDS = ("max_page_bytes", "max_page_entries", "everything")


def plan_for(vendor: str, overrides: Mapping[str, Any] | None = None) -> VendorPlan:
    """The vendor's plan with per-tenant ``overrides`` (``{type: {field: value}}``) applied.

    ``"*"`` holds the tenant-wide fields (the page caps ``max_page_bytes``, ``max_page_entries``,
    and ``everything``).
    Raises ValueError or TypeError for overrides that do not make a plan.
    """
    base = VENDOR_PLANS.get(vendor, VENDOR_PLANS["generic"])
    if not overrides:
        return base
    types = dict(base.types)
    tenant_wide = dict(overrides.get(TENANT_WIDE) or {})
    unknown = set(tenant_wide) - set(_TENANT_WIDE_FIELDS)
    if unknown:
        raise ValueError(f"unknown tenant-wide plan fields: {', '.join(sorted(unknown))}")
    for name, value in tenant_wide.items():
        if name == "everything":
            if type(value) is not bool:
                raise ValueError("everything must be true or false")
        elif type(value) is not int or value < 1:
            raise ValueError(f"{name} must be a positive integer")
    base = dataclasses.replace(base, **tenant_wide)
    for resource_type, changes in overrides.items():
        if resource_type == TENANT_WIDE:
            continue
        current = base.for_type(resource_type)
        values = dict(changes)
        if "variants" in values:
            values["variants"] = tuple(dict(v) for v in values["variants"])
        types[resource_type] = dataclasses.replace(current, **values)
    return dataclasses.replace(base, types=types)


def supports_last_updated(plan: TypePlan, config: SmartConfiguration | None) -> bool:
    """Whether an incremental pull of this type may filter on ``_lastUpdated``."""
    if plan.last_updated is not None:
        return plan.last_updated
    if config is None or not config.resource_search_params:
        return False
    return config.supports_search_param(plan.resource_type, "_lastUpdated")
