"""Preparing a page for storage: the compartment guard, canonical hashes, deletion markers."""

from __future__ import annotations

import datetime as dt
from functools import partial
from typing import Any

from syncsvc.sync.pipeline.compartment import canonical
from syncsvc.sync.pipeline.prepare import is_entered_in_error, prepare_page
from tests.fixtures.fhir_resources import observation

NANCY = "12724066"


_observation = partial(observation, patient=NANCY)


def test_the_guard_rejects_other_patients_other_types_and_missing_ids() -> None:
    page = prepare_page(
        [
            _observation("a"),
            _observation("b", patient="someone-else"),
            {"resourceType": "Condition", "id": "c", "subject": {"reference": f"Patient/{NANCY}"}},
            {"resourceType": "Observation", "subject": {"reference": f"Patient/{NANCY}"}},
        ],
        "Observation",
        NANCY,
    )

    assert [item.resource_id for item in page.items] == ["a"]
    assert page.rejected == ["Observation/b", "Condition/c", "Observation/?"]


def test_meta_is_read_and_the_hash_is_the_canonical_bytes_hash() -> None:
    resource = _observation("a")

    (item,) = prepare_page([resource], "Observation", NANCY).items

    assert item.version_id == "2"
    assert item.last_updated == dt.datetime(2026, 11, 20, 10, 0, 0, 123000, tzinfo=dt.UTC)
    assert (item.body, item.content_hash) == (
        canonical(resource).body,
        canonical(resource).content_hash,
    )
    reordered = dict(reversed(list(resource.items())))
    assert prepare_page([reordered], "Observation", NANCY).items[0].content_hash == (
        item.content_hash
    )


def test_the_same_id_twice_in_a_page_keeps_the_last_and_tracks_the_newest_update() -> None:
    older = _observation("a")
    newer = _observation("a", meta={"versionId": "3", "lastUpdated": "2026-11-21T00:00:00Z"})

    page = prepare_page([older, newer], "Observation", NANCY)

    assert [item.version_id for item in page.items] == ["3"]
    assert page.max_last_updated == dt.datetime(2026, 11, 21, tzinfo=dt.UTC)


def test_an_instant_without_offset_is_not_placed_in_time() -> None:
    resource = _observation("a", meta={"lastUpdated": "2026-11-21T00:00:00"})

    assert prepare_page([resource], "Observation", NANCY).items[0].last_updated is None


def test_entered_in_error_is_recognised_in_each_spelling() -> None:
    condition = {
        "verificationStatus": {"coding": [{"code": "entered-in-error"}]},
    }
    assert is_entered_in_error({"status": "entered-in-error"})
    assert is_entered_in_error({"lifecycleStatus": "entered-in-error"})
    assert is_entered_in_error(condition)
    assert not is_entered_in_error({"status": "final"})
    assert not is_entered_in_error({"verificationStatus": {"coding": [{"code": "confirmed"}]}})


def test_a_resource_nested_deeper_than_json_can_be_written_is_rejected_not_raised() -> None:
    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(300):  # orjson reads 1024 levels but writes at most 254
        inner["x"] = {}
        inner = inner["x"]
    hostile = {**_observation("deep"), "extension": [deep]}

    page = prepare_page([hostile, _observation("fine")], "Observation", NANCY)

    assert [item.resource_id for item in page.items] == ["fine"]
    assert page.rejected == ["Observation/deep"]
