"""The one function that words a connection's state: its rules hold for every status."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from syncsvc.sync.explain import KEPT_UP_TO_DATE, GrantFacts, TypeFacts, explain
from syncsvc.vocabulary import (
    CONNECTION_STATUSES,
    NO_READABLE_TYPE,
    OFFLINE_ACCESS_NOT_GRANTED,
    SCOPES_WITHDRAWN,
    TYPE_STATES,
)

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)
REQUESTED = (
    "launch/patient",
    "offline_access",
    "patient/Observation.read",
    "patient/Condition.read",
)


def _facts(status: str, *, refresh: bool, readable: bool, **extra: object) -> GrantFacts:
    granted = REQUESTED[:3] if readable else REQUESTED[:2]
    fields: dict[str, object] = {
        "status": status,
        "reason": None,
        "status_message": None,
        "requested_scopes": REQUESTED,
        "granted_scopes": granted,
        "has_refresh_token": refresh,
        "access_expires_at": NOW + dt.timedelta(hours=1),
        "readable_types": ("Observation",) if readable else (),
        **extra,
    }
    return GrantFacts(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "refresh", "readable"),
    list(itertools.product(CONNECTION_STATUSES, (True, False), (True, False))),
)
def test_kept_up_to_date_only_with_a_refresh_token_and_a_readable_type(
    status: str, refresh: bool, readable: bool
) -> None:
    explanation = explain(_facts(status, refresh=refresh, readable=readable))
    kept = status == "active" and refresh and readable
    assert explanation.kept_up_to_date is kept
    said = " ".join([explanation.summary, *explanation.sentences])
    assert ("kept up to date" in said) is kept
    assert (explanation.summary == KEPT_UP_TO_DATE) is kept
    # "Connected" is a title only for a connection that can read something.
    assert explanation.title.startswith("Connected") is (status == "active" and readable)
    assert explanation.heading


def test_every_status_has_words_of_its_own() -> None:
    summaries = {
        status: explain(_facts(status, refresh=True, readable=True)).summary
        for status in CONNECTION_STATUSES
        if status != "no_access"
    }
    summaries["no_access"] = explain(
        _facts("no_access", refresh=True, readable=False, reason=NO_READABLE_TYPE)
    ).summary
    assert len(set(summaries.values())) == len(CONNECTION_STATUSES)


def test_no_access_says_whether_it_ever_could_read() -> None:
    never = explain(_facts("no_access", refresh=True, readable=False, reason=NO_READABLE_TYPE))
    later = explain(_facts("no_access", refresh=True, readable=False, reason=SCOPES_WITHDRAWN))
    assert never.title == "Nothing can be synced"
    assert later.title == "Nothing can be synced any more"
    assert never.can_reconnect
    assert later.can_reconnect


def test_offline_access_words_before_and_after_expiry() -> None:
    before = explain(_facts("active", refresh=False, readable=True))
    after = explain(
        _facts("needs_reauth", refresh=False, readable=True, reason=OFFLINE_ACCESS_NOT_GRANTED)
    )
    assert "did not allow offline access" in before.summary
    assert "04 Dec 2026, 13:00 UTC" in before.summary
    assert "did not allow offline access, and the access it gave has expired" in after.summary
    # The summary says it; no second sentence about offline access repeats it.
    assert not any("ffline" in s for s in (*before.sentences, *after.sentences))


def test_a_withdrawn_type_is_never_shown_as_synced() -> None:
    synced_at = NOW - dt.timedelta(days=2)
    explanation = explain(
        _facts(
            "active",
            refresh=True,
            readable=True,
            types={
                "Observation": TypeFacts("ok", NOW),
                "Condition": TypeFacts("withdrawn", synced_at),
            },
            counts={"Observation": 4, "Condition": 7},
        )
    )
    [line] = explanation.withdrawn
    assert line.sentence == (
        "Problems and diagnoses (Condition): your provider stopped sharing this; the 7 record(s) "
        "kept here have not been updated since 02 Dec 2026, 12:00 UTC."
    )
    assert line.sentence in explanation.sentences
    assert explanation.can_reconnect
    # Said once, as withdrawn, not again as "not granted".
    assert not any("Condition) was not granted" in s for s in explanation.sentences)


@pytest.mark.parametrize("state", TYPE_STATES)
def test_every_type_state_has_a_sentence(state: str) -> None:
    explanation = explain(
        _facts(
            "active",
            refresh=True,
            readable=True,
            types={"Observation": TypeFacts(state, NOW)},
            counts={"Observation": 3},
        )
    )
    [line] = [line for line in explanation.types if line.type == "Observation"]
    assert line.sentence.startswith("Lab results and vital signs (Observation): ")
    if state == "ok":
        assert "last updated" in line.sentence
    else:
        assert "last updated" not in line.sentence


OBS = "http://terminology.hl7.org/CodeSystem/observation-category"
LAB = (("category", f"{OBS}|laboratory"),)
VITALS = (("category", f"{OBS}|vital-signs"),)


def test_a_type_shared_in_parts_is_complete_for_the_parts_its_pull_searched() -> None:
    facts = _facts(
        "active",
        refresh=True,
        readable=True,
        parts={"Observation": (LAB, VITALS)},
        counts={"Observation": 7},
        types={
            "Observation": TypeFacts(state="ok", last_success_at=NOW, covered_parts=(LAB,)),
        },
    )
    explanation = explain(facts)
    [line] = [t for t in explanation.types if t.type == "Observation"]
    assert line.shared == "laboratory results and vital signs only"
    assert line.parts == (f"category={OBS}|laboratory", f"category={OBS}|vital-signs")
    assert line.sentence == (
        "Lab results and vital signs (Observation), laboratory results and vital signs only: 7, "
        "last updated 04 Dec 2026, 12:00 UTC. Newly shared vital signs: not synced yet."
    )
    assert line.what_shared == (
        "lab results and vital signs (Observation): laboratory results and vital signs only"
    )


def test_the_rest_of_a_type_granted_whole_before_is_said_to_be_no_longer_updated() -> None:
    facts = _facts(
        "active",
        refresh=True,
        readable=True,
        parts={"Observation": (LAB,)},
        types={"Observation": TypeFacts(state="ok", last_success_at=NOW, withdrawn_parts=("*",))},
    )
    explanation = explain(facts)
    assert (
        "Lab results and vital signs (Observation): your provider now shares laboratory results "
        "only; what was synced of the rest is kept here but no longer updated."
    ) in explanation.sentences
    assert explanation.can_reconnect


SOCIAL = (("category", f"{OBS}|social-history"),)


@pytest.mark.parametrize(
    ("count", "line_sentence"),
    [
        (0, "cannot search for social history, so it is not synced."),
        (4, "cannot search for social history; the 4 record(s) kept here are not updated."),
    ],
)
def test_a_type_shared_only_in_parts_its_provider_cannot_search_says_so(
    count: int, line_sentence: str
) -> None:
    facts = _facts(
        "active",
        refresh=True,
        readable=True,
        parts={"Observation": (SOCIAL,)},
        counts={"Observation": count},
        types={"Observation": TypeFacts(state="unsearchable", unsearchable_parts=(SOCIAL,))},
    )
    explanation = explain(facts)
    [line] = [t for t in explanation.types if t.type == "Observation"]
    assert line.sentence == (
        "Lab results and vital signs (Observation), social history only: your provider's system "
        + line_sentence
    )
    assert line.unsearchable == (f"category={OBS}|social-history",)
    assert explanation.unsearchable_types == (line,)
    assert explanation.to_json()["unsearchable_parts"] == {
        "Observation": [f"category={OBS}|social-history"]
    }
    # One sentence names the part and says nothing failed; not "shared only part ... the rest".
    [cannot] = [s for s in explanation.sentences if "cannot search" in s]
    assert "social history" in cannot
    assert "Nothing failed" in cannot
    assert not any("shared only part" in s for s in explanation.sentences)
    assert explanation.kept_up_to_date


def test_a_part_its_provider_cannot_search_is_never_said_to_be_not_synced_yet() -> None:
    facts = _facts(
        "active",
        refresh=True,
        readable=True,
        parts={"Observation": (LAB, SOCIAL)},
        counts={"Observation": 7},
        types={
            "Observation": TypeFacts(
                state="ok", last_success_at=NOW, covered_parts=(LAB,), unsearchable_parts=(SOCIAL,)
            ),
        },
    )
    explanation = explain(facts)
    [line] = [t for t in explanation.types if t.type == "Observation"]
    assert line.sentence == (
        "Lab results and vital signs (Observation), laboratory results and social history only: "
        "7, last updated 04 Dec 2026, 12:00 UTC."
    )
    assert (
        "Your provider's system cannot search your lab results and vital signs (Observation) for "
        "social history, so that part is not synced. Nothing failed: this is a limit of that "
        "system."
    ) in explanation.sentences
