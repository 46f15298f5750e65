"""Per-vendor query plans: categories, page sizes, _lastUpdated support, tenant overrides."""

from __future__ import annotations

import pytest

from syncsvc.fhir.plans import plan_for, supports_last_updated
from syncsvc.smart.discovery import SmartConfiguration
from syncsvc.smart.scopes import DEFAULT_RESOURCE_TYPES


def test_epic_observation_is_searched_once_per_required_category() -> None:
    searches = plan_for("epic").for_type("Observation").searches("p1")
    assert {s["category"] for s in searches} >= {"laboratory", "vital-signs"}
    assert all(s["patient"] == "p1" for s in searches)


def test_cerner_careplan_asks_for_assess_plan_and_observation_uses_the_maximum_page() -> None:
    cerner = plan_for("cerner")
    assert cerner.for_type("CarePlan").searches("p1") == [
        {"patient": "p1", "_count": "100", "category": "assess-plan"}
    ]
    assert cerner.for_type("Observation").searches("p1") == [{"patient": "p1", "_count": "200"}]


def test_epic_careplan_is_searched_by_its_snomed_categories() -> None:
    searches = plan_for("epic").for_type("CarePlan").searches("p1")
    # Longitudinal and encounter-level care plans, by SNOMED CT code as Epic takes them.
    assert [s["category"] for s in searches] == ["38717003", "734163000"]
    assert all(s["patient"] == "p1" for s in searches)


def test_unknown_vendor_falls_back_to_the_generic_plan() -> None:
    assert plan_for("unknown").for_type("Goal").searches("p") == [{"patient": "p", "_count": "100"}]


def test_tenant_overrides_replace_fields_of_one_type_only() -> None:
    plan = plan_for(
        "cerner", {"Observation": {"count": 50, "variants": [{"category": "laboratory"}]}}
    )
    assert plan.for_type("Observation").searches("p") == [
        {"patient": "p", "_count": "50", "category": "laboratory"}
    ]
    assert plan.for_type("CarePlan").searches("p")[0]["category"] == "assess-plan"


def test_last_updated_support_comes_from_the_plan_or_the_capability_statement() -> None:
    config = SmartConfiguration(
        fhir_base="https://e/r4/t",
        authorization_endpoint="https://e/a",
        token_endpoint="https://e/t",
        source="well-known",
        resource_search_params={"Observation": ("patient", "_lastUpdated"), "Goal": ("patient",)},
    )
    generic = plan_for("generic")
    assert supports_last_updated(generic.for_type("Observation"), config) is True
    assert supports_last_updated(generic.for_type("Goal"), config) is False
    assert supports_last_updated(generic.for_type("Observation"), None) is False
    assert supports_last_updated(plan_for("epic").for_type("Observation"), config) is False


def test_every_us_core_type_is_searched_by_its_compartment_parameter() -> None:
    for vendor in ("generic", "cerner", "epic"):
        plan = plan_for(vendor)
        for resource_type in DEFAULT_RESOURCE_TYPES:
            if resource_type != "Patient":
                assert plan.for_type(resource_type).patient_param == "patient"


def test_vendors_say_which_types_they_cannot_search_per_patient() -> None:
    assert plan_for("cerner").for_type("Provenance").unsupported is not None
    assert plan_for("epic").for_type("Provenance").unsupported is not None
    assert plan_for("generic").for_type("Provenance").unsupported is None
    conditions = plan_for("epic").for_type("Condition").searches("p1")
    assert [s["category"] for s in conditions] == [
        "problem-list-item",
        "encounter-diagnosis",
        "health-concern",
    ]
    # A tenant may say its server does search Provenance per patient.
    assert (
        plan_for("epic", {"Provenance": {"unsupported": None}}).for_type("Provenance").unsupported
        is None
    )


def test_everything_is_a_tenant_wide_switch_off_by_default() -> None:
    assert plan_for("generic").everything is False
    assert plan_for("generic", {"*": {"everything": True}}).everything is True
    with pytest.raises(ValueError, match="true or false"):
        plan_for("generic", {"*": {"everything": 1}})
