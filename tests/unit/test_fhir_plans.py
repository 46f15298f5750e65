"""Per-vendor query plans: categories, page sizes, _lastUpdated support, tenant overrides."""

from __future__ import annotations

from syncsvc.fhir.plans import plan_for, supports_last_updated
from syncsvc.smart.discovery import SmartConfiguration


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
