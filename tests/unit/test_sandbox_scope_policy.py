"""The sandbox's scope policy: granted = requested ∩ registered ∩ tenant policy."""

from __future__ import annotations

import pytest

from syncsvc.sandbox.config import ClientRegistration, TenantPolicy, vendor_policy
from syncsvc.sandbox.scope_policy import (
    grant_scopes,
    issues_refresh_token,
    needs_patient_context,
    returned_scope,
    split,
)

PUBLIC = ClientRegistration(client_id="app", auth="public")
CONFIDENTIAL = ClientRegistration(client_id="app", auth="client_secret_basic", secret="s")


def test_everything_known_is_granted_by_a_permissive_policy() -> None:
    requested = split(
        "launch/patient openid fhirUser offline_access patient/*.read patient/Observation.rs"
    )

    assert grant_scopes(requested, PUBLIC, TenantPolicy()) == requested


def test_unknown_and_system_scopes_are_dropped() -> None:
    requested = ["openid", "made-up", "system/Observation.read", "user/Observation.read"]

    assert grant_scopes(requested, PUBLIC, TenantPolicy()) == ["openid", "user/Observation.read"]


def test_duplicates_are_granted_once() -> None:
    assert grant_scopes(["openid", "openid"], PUBLIC, TenantPolicy()) == ["openid"]


def test_wildcards_dropped_when_unsupported() -> None:
    policy = TenantPolicy(wildcards_supported=False)

    granted = grant_scopes(
        ["patient/*.read", "patient/*.rs", "patient/Patient.read"], PUBLIC, policy
    )

    assert granted == ["patient/Patient.read"]


@pytest.mark.parametrize(
    ("syntax", "expected"),
    [
        ("v1", ["openid", "patient/Observation.read"]),
        ("v2", ["openid", "patient/Condition.rs"]),
        ("both", ["openid", "patient/Observation.read", "patient/Condition.rs"]),
    ],
)
def test_scope_syntax(syntax: str, expected: list[str]) -> None:
    policy = TenantPolicy(scope_syntax=syntax)  # type: ignore[arg-type]

    granted = grant_scopes(
        ["openid", "patient/Observation.read", "patient/Condition.rs"], PUBLIC, policy
    )

    assert granted == expected


def test_trim_to() -> None:
    policy = TenantPolicy(trim_to=["openid", "fhirUser", "launch", "online_access"])

    granted = grant_scopes(
        split("openid fhirUser launch/patient offline_access patient/Patient.read"), PUBLIC, policy
    )

    assert granted == ["openid", "fhirUser"]


def test_missing_scopes_are_silently_dropped() -> None:
    policy = TenantPolicy(missing_scopes=["patient/Condition.read"])

    granted = grant_scopes(["patient/Observation.read", "patient/Condition.read"], PUBLIC, policy)

    assert granted == ["patient/Observation.read"]


def test_offline_access_dropped_for_public_clients_only() -> None:
    policy = vendor_policy("epic")

    assert grant_scopes(["offline_access", "openid"], PUBLIC, policy) == ["openid"]
    assert grant_scopes(["offline_access", "openid"], CONFIDENTIAL, policy) == [
        "offline_access",
        "openid",
    ]


def test_registered_scopes_limit_the_grant() -> None:
    client = ClientRegistration(
        client_id="app", scopes=["openid", "patient/*.read", "patient/Condition.rs"]
    )

    granted = grant_scopes(
        [
            "openid",
            "fhirUser",
            "patient/Observation.read",
            "patient/Condition.r",
            "patient/Goal.rs",
        ],
        client,
        TenantPolicy(),
    )

    assert granted == ["openid", "patient/Observation.read", "patient/Condition.r"]


def test_hidden_offline_access_still_issues_a_refresh_token() -> None:
    policy = TenantPolicy(hide_offline_access_in_scope=True)
    granted = ["openid", "offline_access", "patient/Patient.read"]

    assert returned_scope(granted, policy) == "openid patient/Patient.read"
    assert returned_scope(granted, TenantPolicy()) == "openid offline_access patient/Patient.read"
    assert issues_refresh_token(granted)


def test_refresh_token_only_with_offline_or_online_access() -> None:
    assert issues_refresh_token(["online_access"])
    assert not issues_refresh_token(["openid", "patient/Patient.read"])


def test_patient_context_is_needed_by_patient_scopes() -> None:
    assert needs_patient_context(["patient/Observation.rs"])
    assert not needs_patient_context(["openid", "user/Observation.read"])
