"""Scope planning and grant reports: explicit per-type scopes, v1/v2, trimming, Epic's offline."""

from __future__ import annotations

import pytest

from syncsvc.smart.discovery import SmartConfiguration
from syncsvc.smart.scopes import (
    covered_types,
    explain_trimmed,
    grant_report,
    parse_scope,
    plan_scopes,
    readable_by_id,
)


def config(**kwargs: object) -> SmartConfiguration:
    values: dict[str, object] = {
        "fhir_base": "https://ehr.example/r4/t",
        "authorization_endpoint": "https://ehr.example/authorize",
        "token_endpoint": "https://ehr.example/token",
        "source": "well-known",
    }
    values.update(kwargs)
    return SmartConfiguration(**values)  # type: ignore[arg-type]


def test_plan_requests_explicit_types_never_a_wildcard() -> None:
    scopes = plan_scopes(["Observation", "Condition"], config(capabilities=("permission-v1",)))
    assert scopes == [
        "launch/patient",
        "openid",
        "fhirUser",
        "offline_access",
        "patient/Observation.read",
        "patient/Condition.read",
    ]
    assert not any("*" in s for s in scopes)


def test_plan_uses_v2_syntax_when_the_server_only_speaks_v2() -> None:
    scopes = plan_scopes(["Observation"], config(capabilities=("permission-v2",)))
    assert scopes[-1] == "patient/Observation.rs"


def test_plan_prefers_v2_when_both_are_supported() -> None:
    caps = ("permission-v1", "permission-v2")
    assert plan_scopes(["Goal"], config(capabilities=caps))[-1] == "patient/Goal.rs"


@pytest.mark.parametrize(
    ("caps", "choice", "expected"),
    [
        (("permission-v1",), "auto", "patient/Goal.read"),
        (("permission-v2",), "auto", "patient/Goal.rs"),
        (("permission-v1", "permission-v2"), "v1", "patient/Goal.read"),
        (("permission-v1",), "v2", "patient/Goal.rs"),
        ((), "auto", "patient/Goal.read"),
    ],
)
def test_the_tenant_option_overrides_what_the_server_advertises(
    caps: tuple[str, ...], choice: str, expected: str
) -> None:
    assert plan_scopes(["Goal"], config(capabilities=caps), choice)[-1] == expected


def test_a_server_listing_only_v2_scopes_gets_v2() -> None:
    supported = ("openid", "patient/Goal.rs")
    assert plan_scopes(["Goal"], config(scopes_supported=supported))[-1] == "patient/Goal.rs"


def test_plan_skips_types_the_server_advertises_no_scope_for() -> None:
    supported = ("openid", "patient/Observation.read", "patient/Condition.read")
    scopes = plan_scopes(["Observation", "Goal"], config(scopes_supported=supported))
    assert "patient/Observation.read" in scopes
    assert "patient/Goal.read" not in scopes


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("patient/Observation.read", ("patient", "Observation", "read", "v1")),
        ("Patient/observation.READ", ("patient", "Observation", "read", "v1")),
        ("patient/Observation.rs", ("patient", "Observation", "rs", "v2")),
        ("patient/*.read", ("patient", "*", "read", "v1")),
        ("user/Condition.cruds", ("user", "Condition", "cruds", "v2")),
    ],
)
def test_parse_scope(scope: str, expected: tuple[str, str, str, str]) -> None:
    parsed = parse_scope(scope)
    assert parsed is not None
    assert (parsed.context, parsed.resource_type, parsed.permissions, parsed.syntax) == expected


@pytest.mark.parametrize("scope", ["openid", "launch/patient", "offline_access", "patient/.read"])
def test_non_resource_scopes_parse_to_none(scope: str) -> None:
    assert parse_scope(scope) is None


def test_covered_types_reads_v1_v2_wildcards_and_ignores_write_only() -> None:
    candidates = ["Observation", "Condition", "Goal", "Procedure"]
    assert covered_types(["patient/Observation.read", "patient/Goal.c"], candidates) == [
        "Observation"
    ]
    assert covered_types(["patient/Condition.s"], candidates) == ["Condition"]
    assert covered_types(["patient/*.rs"], candidates) == candidates
    assert covered_types(["system/Observation.read"], candidates) == []
    # Syncing searches a type: read alone (``r``) is not enough, search alone is.
    assert covered_types(["patient/Goal.r"], candidates) == []
    assert covered_types(["patient/Patient.r"], ["Patient"]) == ["Patient"]


def test_readable_types_need_a_whole_read_not_a_search() -> None:
    shared = ["Practitioner", "Organization", "Location", "Binary"]
    # Shared resources and Binary are read by id: ``r`` is what counts, ``s`` alone does not.
    assert readable_by_id(["user/Practitioner.r", "patient/Binary.r"], shared) == [
        "Practitioner",
        "Binary",
    ]
    assert readable_by_id(["patient/Organization.read"], shared) == ["Organization"]
    assert readable_by_id(["patient/Location.s"], shared) == []
    assert readable_by_id(["patient/*.rs"], shared) == shared
    assert readable_by_id(["system/Practitioner.read"], shared) == []
    # A query-narrowed read cannot promise an id named elsewhere lies within it.
    assert readable_by_id(["patient/Location.r?address-state=MA"], shared) == []


def test_trimmed_scopes_are_reported_with_plain_explanations() -> None:
    requested = [
        "launch/patient",
        "openid",
        "fhirUser",
        "offline_access",
        "patient/Observation.read",
        "patient/Condition.read",
    ]
    granted = ["openid", "fhirUser", "launch", "online_access"]
    report = grant_report(requested, granted, has_refresh_token=False)
    assert report.synced_types == ()
    assert report.offline is False
    assert set(report.trimmed) == {
        "launch/patient",
        "offline_access",
        "patient/Observation.read",
        "patient/Condition.read",
    }
    text = " ".join(explain_trimmed(report))
    assert "lab results and vital signs" in text
    assert "Offline access was not granted" in text


def test_epic_refresh_token_without_offline_access_in_scope_counts_as_offline() -> None:
    requested = ["launch/patient", "offline_access", "patient/Observation.read"]
    granted = ["launch/patient", "patient/Observation.read"]
    report = grant_report(requested, granted, has_refresh_token=True)
    assert report.offline is True
    assert report.trimmed == ()
    assert report.synced_types == ("Observation",)


def test_wildcard_grant_covers_requested_types() -> None:
    requested = ["patient/Observation.read", "patient/Goal.read"]
    report = grant_report(requested, ["patient/*.read"], has_refresh_token=True)
    assert report.trimmed == ()
    assert report.synced_types == ("Observation", "Goal")


def test_malformed_granted_scopes_are_recorded_and_grant_nothing() -> None:
    requested = ["patient/Observation.rs", "patient/Goal.rs"]
    granted = ["patient/Observation.rs?", "patient/Goal.rs", "patient/Observation.sr"]
    report = grant_report(requested, granted, has_refresh_token=True)
    assert report.malformed == ("patient/Observation.rs?", "patient/Observation.sr")
    assert report.synced_types == ("Goal",)
    assert report.trimmed == ("patient/Observation.rs",)
