"""The compartment guard and canonical hashing."""

from __future__ import annotations

import pytest

from syncsvc.sync.pipeline.compartment import belongs_to_patient, canonical, resource_identity


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "Patient", "id": "p1"},
        {"resourceType": "Observation", "id": "o", "subject": {"reference": "Patient/p1"}},
        {
            "resourceType": "Observation",
            "id": "o",
            "subject": {"reference": "https://ehr.example/r4/t/Patient/p1/_history/3"},
        },
        {"resourceType": "Immunization", "id": "i", "patient": {"reference": "Patient/p1"}},
        {
            "resourceType": "Provenance",
            "id": "v",
            "target": [{"reference": "Observation/o"}, {"reference": "Patient/p1"}],
        },
        # A parent may hold the policy: only the beneficiary names the compartment.
        {
            "resourceType": "Coverage",
            "id": "c",
            "beneficiary": {"reference": "Patient/p1"},
            "policyHolder": {"reference": "Patient/p9"},
        },
        {"resourceType": "Device", "id": "d", "patient": {"reference": "Patient/p1"}},
    ],
)
def test_own_resources_belong(resource: dict[str, object]) -> None:
    assert belongs_to_patient(resource, "p1")


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "Patient", "id": "p2"},
        {"resourceType": "Observation", "id": "o", "subject": {"reference": "Patient/p2"}},
        {"resourceType": "Observation", "id": "o"},  # no patient reference at all
        {"resourceType": "Observation", "id": "o", "subject": {"reference": "Group/p1"}},
        {"resourceType": "AllergyIntolerance", "id": "a", "patient": {"display": "p1"}},
        {"resourceType": "Condition", "id": "c", "subject": "Patient/p1"},  # not a Reference
        {"id": "x", "subject": {"reference": "Patient/p1"}},  # no resourceType
        {"resourceType": "Provenance", "id": "v", "target": [{"reference": "Observation/o"}]},
        {
            "resourceType": "Provenance",
            "id": "v",
            "target": [{"reference": "Patient/p1"}, {"reference": "Patient/p2"}],
        },
        {"resourceType": "Coverage", "id": "c", "beneficiary": {"reference": "Patient/p2"}},
    ],
)
def test_foreign_or_unanchored_resources_are_refused(resource: dict[str, object]) -> None:
    assert not belongs_to_patient(resource, "p1")


def test_canonical_bytes_ignore_key_order() -> None:
    a = canonical({"resourceType": "Goal", "id": "g", "status": "active"})
    b = canonical({"status": "active", "id": "g", "resourceType": "Goal"})
    assert a == b
    assert a.content_hash != canonical({"resourceType": "Goal", "id": "g"}).content_hash


def test_identity_needs_a_type_and_a_valid_id() -> None:
    assert resource_identity({"resourceType": "Goal", "id": "g1"}) == ("Goal", "g1")
    assert resource_identity({"resourceType": "Goal"}) is None
    assert resource_identity({"resourceType": "Goal", "id": "x" * 65}) is None
    assert resource_identity({"resourceType": "Goal", "id": 5}) is None


BASE = "https://fhir.example.org/r4/tenant-a"


@pytest.mark.parametrize(
    ("reference", "belongs"),
    [
        ("Patient/12724066", True),
        (f"{BASE}/Patient/12724066", True),
        ("https://other.example.org/r4/tenant-b/Patient/12724066", False),  # same id elsewhere
        (f"{BASE}/../tenant-b/Patient/12724066", False),
    ],
)
def test_absolute_patient_references_count_only_under_the_connections_base(
    reference: str, belongs: bool
) -> None:
    resource = {
        "resourceType": "Observation",
        "id": "o1",
        "subject": {"reference": reference},
    }
    assert belongs_to_patient(resource, "12724066", BASE) is belongs
