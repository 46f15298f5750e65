"""The sandbox's synthetic data: determinism, sizes, FHIR shapes, codings and mutations."""

from __future__ import annotations

import base64
import dataclasses
from datetime import datetime
from typing import Any

import orjson
import pytest

from syncsvc.sandbox.config import COMPARTMENT_TYPES, SandboxConfig, TenantConfig, default_config
from syncsvc.sandbox.data import (
    DEFAULT_SIZE_RANGE,
    PATIENT_FIELD,
    Bucket,
    DataStore,
    category_tokens,
)
from syncsvc.sandbox.record_types import SIZE_RANGES
from syncsvc.sandbox.referenced import MISSING_PRACTITIONER, OUTSIDE_ORGANIZATION, REFERENCED_TYPES

NANCY = "12724066"
WILMA = "12742400"
BASE = "http://127.0.0.1:9/fhir/generic"


def _store(config: SandboxConfig | None = None) -> DataStore:
    return DataStore(config or default_config(), lambda tenant: f"http://127.0.0.1:9/t/{tenant.id}")


def _tenant(store: DataStore, vendor: str = "generic") -> TenantConfig:
    return next(t for t in store.config.tenants if t.vendor == vendor)


def _bucket(
    store: DataStore, resource_type: str, patient: str = NANCY, vendor: str = "generic"
) -> Bucket:
    bucket = store.bucket(_tenant(store, vendor), patient, resource_type)
    assert bucket is not None
    return bucket


def _resources(bucket: Bucket) -> list[dict[str, Any]]:
    return [orjson.loads(e.body) for e in bucket.entries]


def _codings(concept: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in concept["coding"]}


@pytest.mark.parametrize("resource_type", ["Patient", *COMPARTMENT_TYPES])
def test_generation_is_deterministic_from_the_seed(resource_type: str) -> None:
    first = [e.body for e in _bucket(_store(), resource_type).entries]
    second = [e.body for e in _bucket(_store(), resource_type).entries]
    reseeded = dataclasses.replace(default_config(), seed=7)
    other = [e.body for e in _bucket(_store(reseeded), resource_type).entries]

    assert first == second
    if resource_type != "Patient":
        assert first != other


def test_sizes_come_from_the_patient_spec_or_a_small_default() -> None:
    store = _store()

    wilma = _bucket(store, "Observation", WILMA)
    defaults = [len(_bucket(store, t).entries) for t in COMPARTMENT_TYPES]

    assert len(wilma.entries) == 400
    ranges = [SIZE_RANGES.get(t, DEFAULT_SIZE_RANGE) for t in COMPARTMENT_TYPES]
    assert all(low <= n <= high for n, (low, high) in zip(defaults, ranges, strict=True))
    assert all(n >= 1 for n in defaults)
    assert len(_bucket(store, "Patient").entries) == 1


def test_an_unknown_patient_or_type_has_no_bucket() -> None:
    store = _store()

    assert store.bucket(_tenant(store), "nobody", "Observation") is None
    assert store.bucket(_tenant(store), NANCY, "Basic") is None


@pytest.mark.parametrize("resource_type", COMPARTMENT_TYPES)
def test_every_resource_has_id_meta_and_the_patient_reference(resource_type: str) -> None:
    bucket = _bucket(_store(), resource_type)
    field = PATIENT_FIELD.get(resource_type, "subject")
    reference = {"reference": f"Patient/{NANCY}"}

    resources = _resources(bucket)

    assert resources
    for resource, entry in zip(resources, bucket.entries, strict=True):
        assert resource["resourceType"] == resource_type
        assert resource["id"] == entry.id
        assert resource["meta"]["versionId"] == "1"
        updated = datetime.fromisoformat(resource["meta"]["lastUpdated"])
        assert updated.tzinfo is not None
        assert resource[field] == ([reference] if field == "target" else reference)
    keys = [(e.ms, e.id) for e in bucket.entries]
    assert keys == sorted(keys)
    assert len({e.id for e in bucket.entries}) == len(keys)


def test_resource_ids_differ_between_patients() -> None:
    store = _store()

    nancy = {e.id for e in _bucket(store, "Condition").entries}
    wilma = {e.id for e in _bucket(store, "Condition", WILMA).entries}

    assert nancy.isdisjoint(wilma)


def test_observations_carry_loinc_codes_ucum_units_and_categories() -> None:
    resources = _resources(_bucket(_store(), "Observation", WILMA))

    categories = {r["category"][0]["coding"][0]["code"] for r in resources}
    quantities = [r for r in resources if "valueQuantity" in r]
    codes = {c for r in resources for c in _codings(r["code"])}

    assert {"vital-signs", "laboratory"} <= categories
    assert {("http://loinc.org", "8867-4"), ("http://loinc.org", "2339-0")} <= codes
    for observation in quantities:
        assert observation["valueQuantity"]["system"] == "http://unitsofmeasure.org"
        assert observation["status"] == "final"
    heart_rates = [r for r in quantities if r["code"]["coding"][0]["code"] == "8867-4"]
    assert heart_rates
    assert {r["valueQuantity"]["unit"] for r in heart_rates} == {"/min"}


@pytest.mark.parametrize(
    ("resource_type", "element", "system"),
    [
        ("Condition", "code", "http://snomed.info/sct"),
        ("Procedure", "code", "http://snomed.info/sct"),
        ("AllergyIntolerance", "code", "http://snomed.info/sct"),
        (
            "MedicationRequest",
            "medicationCodeableConcept",
            "http://www.nlm.nih.gov/research/umls/rxnorm",
        ),
        ("Immunization", "vaccineCode", "http://hl7.org/fhir/sid/cvx"),
        ("DiagnosticReport", "code", "http://loinc.org"),
    ],
)
def test_terminologies_per_type(resource_type: str, element: str, system: str) -> None:
    store = _store()
    resources = _resources(_bucket(store, resource_type))

    concepts = [r[element] if element in r else _referenced_code(store, r) for r in resources]
    assert {c[0] for concept in concepts for c in _codings(concept)} == {system}


def _referenced_code(store: DataStore, order: dict[str, Any]) -> dict[str, Any]:
    """The code of the Medication resource a MedicationRequest names instead of coding inline."""
    kind, _, rid = order["medicationReference"]["reference"].partition("/")
    entry = store.shared(_tenant(store), kind, rid)
    assert entry is not None
    code: dict[str, Any] = orjson.loads(entry.body)["code"]
    return code


def test_records_reference_shared_resources_some_missing_and_one_outside() -> None:
    store = _store()
    tenant = _tenant(store)
    references = [
        value
        for resource_type in ("Encounter", "MedicationRequest", "Immunization", "Procedure")
        for body in (e.body for e in _bucket(store, resource_type).entries)
        for value in _references(orjson.loads(body))
    ]
    shared = [r for r in references if r.split("/")[0] in REFERENCED_TYPES]
    held = [r for r in shared if store.shared(tenant, *r.split("/", 1)) is not None]

    assert {r.split("/")[0] for r in held} == set(REFERENCED_TYPES)
    assert len(set(held)) < len(held)  # resources share them
    assert set(shared) - set(held) == {f"Practitioner/{MISSING_PRACTITIONER}"}
    assert OUTSIDE_ORGANIZATION in references


def _references(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["reference"]] if isinstance(value.get("reference"), str) else []
        return found + [r for item in value.values() for r in _references(item)]
    if isinstance(value, list):
        return [r for item in value for r in _references(item)]
    return []


def test_care_plan_categories_follow_the_vendor() -> None:
    store = _store()

    cerner = set().union(
        *(e.categories for e in _bucket(store, "CarePlan", vendor="cerner").entries)
    )
    epic = [e.categories for e in _bucket(store, "CarePlan", vendor="epic").entries]

    assert "assess-plan" in cerner
    assert not cerner & {"38717003", "734163000"}
    # Each Epic plan is longitudinal or encounter-level, by SNOMED CT code, and there are both.
    longitudinal = {"38717003", "http://snomed.info/sct|38717003"}
    encounter = {"734163000", "http://snomed.info/sct|734163000"}
    assert all((longitudinal <= c) != (encounter <= c) for c in epic)
    assert any(longitudinal <= c for c in epic)
    assert any(encounter <= c for c in epic)
    assert not set().union(*epic) & {"longitudinal", "encounter", "736271009"}


def test_document_content_is_a_binary_of_the_announced_size() -> None:
    store = _store()
    tenant = _tenant(store)

    for document in _resources(_bucket(store, "DocumentReference")):
        attachment = document["content"][0]["attachment"]
        assert attachment["url"].startswith(f"http://127.0.0.1:9/t/{tenant.id}/Binary/")
        binary = store.binary(tenant, attachment["url"].rsplit("/", 1)[1])
        assert binary is not None
        assert binary.patient_id == NANCY
        assert binary.content_type == attachment["contentType"]
        assert len(binary.content) == attachment["size"]
        wrapped = orjson.loads(binary.resource("x", "2025-01-01T00:00:00Z"))
        assert wrapped["resourceType"] == "Binary"
        assert base64.b64decode(wrapped["data"]) == binary.content


def test_binary_lookup_generates_documents_on_demand() -> None:
    warm = _store()
    url = _resources(_bucket(warm, "DocumentReference", WILMA))[0]["content"][0]["attachment"][
        "url"
    ]
    cold = _store()

    binary = cold.binary(_tenant(cold), url.rsplit("/", 1)[1])

    assert binary is not None
    assert binary.patient_id == WILMA


def test_owner_finds_the_patient_of_any_id() -> None:
    store = _store()
    tenant = _tenant(store)
    wilmas = _bucket(_store(), "Goal", WILMA).entries[0].id

    assert store.owner(tenant, "Goal", wilmas) == WILMA
    assert store.owner(tenant, "Goal", "nope") is None


def test_large_buckets_hold_bytes_not_dicts() -> None:
    config = default_config()
    config.tenants[2].patients[0].sizes = {"Observation": 10_000}
    bucket = _bucket(_store(config), "Observation")

    assert len(bucket.entries) == 10_000
    assert all(isinstance(e.body, bytes) for e in bucket.entries[:100])
    assert not hasattr(bucket.entries[0], "__dict__")


def test_add_update_delete_and_entered_in_error() -> None:
    store = _store()
    bucket = _bucket(store, "Condition")
    count = len(bucket.entries)
    now = 1_900_000_000.5

    added = store.add(bucket, {"code": {"text": "New"}, "subject": {"reference": "Patient/x"}}, now)
    updated = store.update(bucket, bucket.entries[0].id, {"code": {"text": "Changed"}}, now + 1)
    assert updated is not None
    marked = store.enter_in_error(bucket, added.id, now + 2)
    assert marked is not None
    deleted_id = bucket.entries[0].id
    assert store.delete(bucket, deleted_id)

    assert len(bucket.entries) == count
    assert orjson.loads(added.body)["subject"] == {"reference": f"Patient/{NANCY}"}
    assert (updated.version, updated.ms) == (2, 1_900_000_001_500)
    assert bucket.entries[-2:] == [updated, marked]
    marked_resource = orjson.loads(marked.body)
    assert marked_resource["verificationStatus"]["coding"][0]["code"] == "entered-in-error"
    assert "clinicalStatus" not in marked_resource
    assert marked.version == 2
    assert deleted_id in bucket.deleted
    assert deleted_id not in bucket.by_id
    assert not store.delete(bucket, deleted_id)
    assert store.update(bucket, deleted_id, {}, now) is None
    with pytest.raises(ValueError, match="already exists"):
        store.add(bucket, {"id": added.id}, now)


def test_category_filters_are_cached_until_the_bucket_changes() -> None:
    store = _store()
    bucket = _bucket(store, "Observation", WILMA)
    vitals = (frozenset({"vital-signs"}),)

    first = bucket.source(vitals)
    assert bucket.source(vitals) is first
    store.add(bucket, {"category": [{"coding": [{"code": "vital-signs"}]}]}, 1_900_000_000.0)
    refreshed = bucket.source(vitals)

    assert refreshed is not first
    assert len(refreshed) == len(first) + 1


def test_window_bounds_by_last_updated() -> None:
    bucket = _bucket(_store(), "Observation", WILMA)
    pivot = bucket.entries[100].ms

    _, lo, hi = bucket.window((), pivot, None)
    _, lo2, hi2 = bucket.window((), None, pivot)

    assert (lo, hi) == (100, 400)
    assert (lo2, hi2) == (0, 100)


def test_category_tokens_read_code_and_system_code() -> None:
    tokens = category_tokens({"category": [{"coding": [{"system": "s", "code": "c"}]}]})
    single = category_tokens({"category": {"coding": [{"code": "x"}]}})

    assert tokens == {"c", "s|c"}
    assert single == {"x", "|x"}
    assert category_tokens({}) == frozenset()


@pytest.mark.parametrize("vendor", ["cerner", "epic", "generic"])
def test_radiology_reports_carry_their_text_as_a_presented_form(vendor: str) -> None:
    store = _store()
    tenant = _tenant(store, vendor)
    reports = _resources(_bucket(store, "DiagnosticReport", vendor=vendor))
    radiology = [r for r in reports if r["category"][0]["coding"][0]["code"] == "RAD"]
    assert radiology
    assert all("presentedForm" not in r for r in reports if r not in radiology)

    for report in radiology:
        forms = report["presentedForm"]
        if vendor == "generic":
            # Inline: the text itself, no Binary to fetch.
            [form] = forms
            assert "url" not in form
            assert len(base64.b64decode(form["data"])) == form["size"]
            continue
        for form in forms:
            binary = store.binary(tenant, form["url"].rsplit("/", 1)[1])
            assert binary is not None
            assert binary.owner == f"DiagnosticReport/{report['id']}"
            assert (binary.content_type, len(binary.content)) == (form["contentType"], form["size"])


def test_documents_are_padded_to_the_configured_size() -> None:
    config = default_config()
    for tenant in config.tenants:
        tenant.policy.document_bytes = 50_000
    store = _store(config)

    for document in _resources(_bucket(store, "DocumentReference", vendor="cerner")):
        for content in document["content"]:
            assert content["attachment"]["size"] >= 50_000
