"""Where a reference in a stored resource points, seen from the connection's FHIR base."""

from __future__ import annotations

import orjson
import pytest

from syncsvc.fhir.references import Outside, Target, classify, references_in
from syncsvc.sync.pipeline.compartment import canonical

BASE = "https://ehr.example.org/r4/tenant-a"


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Practitioner/123", Target("Practitioner", "123")),
        ("Medication/med-1/_history/3", Target("Medication", "med-1")),
        (f"{BASE}/Location/loc.1", Target("Location", "loc.1")),
        (f"{BASE}/Organization/org-main/_history/2", Target("Organization", "org-main")),
    ],
)
def test_references_under_the_base_are_read_by_type_and_id(
    reference: str, expected: Target
) -> None:
    assert classify(reference, BASE) == expected


@pytest.mark.parametrize(
    ("reference", "kind", "resource_type"),
    [
        ("https://other.example.org/r4/tenant-a/Practitioner/1", "other_server", "Practitioner"),
        ("https://ehr.example.org/r4/tenant-b/Practitioner/1", "other_server", "Practitioner"),
        ("http://ehr.example.org/r4/tenant-a/Practitioner/1", "other_server", "Practitioner"),
        ("https://ehr.example.org:8443/r4/tenant-a/Location/1", "other_server", "Location"),
        (f"{BASE}/../tenant-b/Practitioner/1", "other_server", "Practitioner"),
        (f"{BASE}/Patient/../Practitioner/1", "other_server", "Practitioner"),
        (f"{BASE}/%2e%2e/tenant-b/Organization/1", "other_server", "Organization"),
        ("https://user@ehr.example.org/r4/tenant-a/Practitioner/1", "other_server", "Practitioner"),
        ("#med1", "contained", None),
        ("urn:uuid:4f6a3c2e-8d7b-4a1f-9c3e-2b5d6e7f8a90", "urn", None),
        ("Practitioner/../../x", "malformed", "Practitioner"),
        ("a/b/Location/1", "malformed", "Location"),
        ("Practitioner/has space", "malformed", "Practitioner"),
    ],
)
def test_references_outside_the_base_are_recorded_not_followed(
    reference: str, kind: str, resource_type: str | None
) -> None:
    found = classify(reference, BASE)

    assert isinstance(found, Outside)
    assert (found.kind, found.resource_type) == (kind, resource_type)
    assert reference not in found.key  # a digest, never the URL itself


@pytest.mark.parametrize(
    "reference", ["Patient/1", "Encounter/abc", "https://other.example.org/Patient/1", "Binary/x"]
)
def test_references_to_other_types_are_not_shared_ones(reference: str) -> None:
    assert classify(reference, BASE) is None


def test_references_are_found_in_stored_bytes_escapes_and_identifiers_included() -> None:
    resource = {
        "resourceType": "Observation",
        "subject": {"reference": "Patient/1"},
        "performer": [
            {"reference": "Practitioner/p1"},
            {"reference": "Practitioner/p1"},
            {"reference": "Organization\\u002Fo1"},
            {"identifier": {"system": "urn:oid:2.16.840.1.113883.4.6", "value": "1"}},
        ],
        "note": [{"text": '"reference":"Practitioner/not-a-reference"'}],
        "extension": [{"url": "x", "valueString": 'a "reference":"Location/l1" b'}],
    }
    body = canonical(resource).body
    raw = body.replace(b"Organization\\\\u002Fo1", b"Organization\\/o1")

    found = list(references_in(raw, BASE))

    targets = [f.key for f in found if isinstance(f, Target)]
    outside = [f.kind for f in found if isinstance(f, Outside)]
    assert targets == ["Practitioner/p1", "Practitioner/p1", "Organization/o1"]
    assert outside == ["identifier"]
    assert orjson.loads(raw)  # still JSON: the escape is the EHR's, not the test's
