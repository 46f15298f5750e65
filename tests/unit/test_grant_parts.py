"""A type's searches narrowed to the parts a grant gave, with the vendor's variants; the words."""

from __future__ import annotations

from syncsvc.fhir.grant_parts import in_parts, within_grant
from syncsvc.fhir.plans import plan_for
from syncsvc.smart.scope_grammar import Part, TypeGrant, part_of_text
from syncsvc.sync.grant_states import rescoped
from syncsvc.sync.type_words import shared_words

OBS = "http://terminology.hl7.org/CodeSystem/observation-category"
LAB = f"category={OBS}|laboratory"
VITALS = f"category={OBS}|vital-signs"
SNOMED = "http://snomed.info/sct"


def part(text: str) -> Part:
    parsed = part_of_text(text)
    assert parsed is not None
    return parsed


def test_a_whole_grant_keeps_the_vendors_plan() -> None:
    plan = plan_for("epic").for_type("Observation")
    granted = within_grant(plan, TypeGrant("Observation"))
    assert granted.plan == plan
    assert granted.searched is None


def test_a_generic_plan_searches_each_granted_part() -> None:
    plan = plan_for("generic").for_type("Observation")
    granted = within_grant(plan, TypeGrant("Observation", (part(LAB), part(VITALS))))
    searches = granted.plan.searches("p1")
    assert [s["category"] for s in searches] == [f"{OBS}|laboratory", f"{OBS}|vital-signs"]
    assert all(s["patient"] == "p1" for s in searches)
    assert granted.searched == (part(LAB), part(VITALS))


def test_epic_variants_are_intersected_with_the_grant() -> None:
    plan = plan_for("epic").for_type("Observation")
    assert len(plan.variants) == 6
    granted = within_grant(plan, TypeGrant("Observation", (part(VITALS),)))
    assert [s["category"] for s in granted.plan.searches("p1")] == [f"{OBS}|vital-signs"]


def test_a_granted_care_plan_category_narrows_epics_snomed_variants() -> None:
    plan = plan_for("epic").for_type("CarePlan")
    encounter = part(f"category={SNOMED}|734163000")
    granted = within_grant(plan, TypeGrant("CarePlan", (encounter,)))
    # The search carries the grant's system-qualified token, and only that category.
    assert [s["category"] for s in granted.plan.searches("p1")] == [f"{SNOMED}|734163000"]
    assert granted.searched == (encounter,)
    bare = within_grant(plan, TypeGrant("CarePlan", (part("category=38717003"),)))
    assert [s["category"] for s in bare.plan.searches("p1")] == ["38717003"]
    # A word Epic does not take as a category is not searchable there, and is said so.
    word = part("category=longitudinal")
    refused = within_grant(plan, TypeGrant("CarePlan", (word,)))
    assert refused.plan.variants == ()
    assert refused.unsearchable == (word,)


def test_a_part_no_vendor_variant_admits_is_left_out_and_said() -> None:
    plan = plan_for("epic").for_type("Observation")
    odd = part(f"category={OBS}|therapy")
    granted = within_grant(plan, TypeGrant("Observation", (part(LAB), odd)))
    assert granted.searched == (part(LAB),)
    assert granted.unsearchable == (odd,)
    # A part naming the plan's own parameters is never searched as given.
    other = within_grant(
        plan_for("generic").for_type("Goal"), TypeGrant("Goal", (part("patient=x"),))
    )
    assert other.plan.variants == ()
    assert other.unsearchable == (part("patient=x"),)


def test_another_parameter_is_added_to_each_variant() -> None:
    plan = plan_for("cerner").for_type("CarePlan")
    granted = within_grant(plan, TypeGrant("CarePlan", (part("status=active"),)))
    assert granted.plan.searches("p1") == [
        {"patient": "p1", "_count": "100", "category": "assess-plan", "status": "active"}
    ]


def test_a_stored_resource_is_told_to_be_in_a_part_or_not() -> None:
    lab = b'{"category":[{"coding":[{"system":"' + OBS.encode() + b'","code":"laboratory"}]}]}'
    assert in_parts(lab, [part(LAB)])
    assert not in_parts(lab, [part(VITALS)])
    assert not in_parts(lab, [part("status=final")])  # not judged: never flagged on a guess
    assert not in_parts(b"not json", [part(LAB)])


def test_the_words_for_shared_parts() -> None:
    assert shared_words(None) is None
    assert shared_words((part(LAB),)) == "laboratory results only"
    assert shared_words((part(LAB), part(VITALS))) == "laboratory results and vital signs only"
    assert shared_words((part("category=x|odd"), part("code=y|123"))) == "odd and code 123 only"


def test_a_refresh_widens_to_parts_of_what_was_requested_and_never_beyond() -> None:
    requested = ["launch/patient", "patient/Observation.rs"]
    recorded = ["launch/patient", f"patient/Observation.rs?{LAB}"]
    returned = [*recorded, f"patient/Observation.rs?{VITALS}", "patient/Condition.rs"]
    widened = rescoped(recorded, requested, returned, holds_refresh_token=True)
    assert widened == [*recorded, f"patient/Observation.rs?{VITALS}"]
    # The same grant spelled with a percent-encoded bar is no change.
    encoded = ["launch/patient", f"patient/Observation.rs?{LAB.replace('|', '%7C')}"]
    assert rescoped(recorded, requested, encoded, holds_refresh_token=True) is None
