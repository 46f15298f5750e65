"""Pure rules of the sandbox's FHIR server and admin API: dates, page contexts, validation."""

from __future__ import annotations

from typing import Any, get_type_hints

import pytest

from syncsvc.sandbox.admin import AdminError, conforms, is_loopback, merge_patch, parse_fault
from syncsvc.sandbox.config import TenantPolicy, default_config
from syncsvc.sandbox.data import DataStore
from syncsvc.sandbox.fhir import PAGE_CONTEXT_LIMIT, FhirServer, PageContext, Query, instant_range
from syncsvc.sandbox.state import SandboxState


@pytest.mark.parametrize(
    ("value", "start", "end"),
    [
        ("2024", 1704067200000, 1735689600000),
        ("2024-12", 1733011200000, 1735689600000),
        ("2024-02-29", 1709164800000, 1709251200000),
        ("2024-01-01T00:00Z", 1704067200000, 1704067260000),
        ("2024-01-01T00:00:00Z", 1704067200000, 1704067201000),
        ("2024-01-01T02:00:00+02:00", 1704067200000, 1704067201000),
        ("2024-01-01T00:00:00.250Z", 1704067200250, 1704067200251),
    ],
)
def test_instant_range_covers_the_precision(value: str, start: int, end: int) -> None:
    assert instant_range(value) == (start, end)


@pytest.mark.parametrize("value", ["2024-01-01T00:00:00", "yesterday", "2024-13", "24-01-01"])
def test_instant_range_refuses_values_without_zone_or_shape(value: str) -> None:
    with pytest.raises(ValueError, match=r".+"):
        instant_range(value)


def test_page_contexts_are_bounded_oldest_first() -> None:
    config = default_config()
    state = SandboxState(config)
    server = FhirServer(state, DataStore(config, lambda t: "http://x"), "generic")
    context = PageContext("generic", "Goal", Query("12724066"), 0)

    urls = [server._remember(context, "http://x") for _ in range(PAGE_CONTEXT_LIMIT + 5)]

    assert len(state.page_contexts) == PAGE_CONTEXT_LIMIT
    first_key = urls[0].split("pageContext=")[1].split("&")[0]
    last_key = urls[-1].split("pageContext=")[1].split("&")[0]
    assert first_key not in state.page_contexts
    assert last_key in state.page_contexts


@pytest.mark.parametrize(
    ("remote", "expected"),
    [
        ("127.0.0.1", True),
        ("127.5.6.7", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("192.168.1.20", False),
        ("::ffff:10.0.0.1", False),
        ("", False),
        (None, False),
        ("not-an-ip", False),
    ],
)
def test_only_loopback_peers_reach_the_admin_api(remote: str | None, expected: bool) -> None:
    assert is_loopback(remote) is expected


def test_merge_patch_follows_rfc_7386() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}}

    merged = merge_patch(target, {"a": "z", "c": {"f": None}, "n": [1]})

    assert merged == {"a": "z", "c": {"d": "e"}, "n": [1]}
    assert target == {"a": "b", "c": {"d": "e", "f": "g"}}
    assert merge_patch(target, ["x"]) == ["x"]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("pkce", "accepted", True),
        ("pkce", "sometimes", False),
        ("default_count", 10, True),
        ("default_count", True, False),
        ("trim_to", None, True),
        ("trim_to", ["openid"], True),
        ("trim_to", ["openid", 3], False),
        ("count_maxima", {"Observation": 5}, True),
        ("count_maxima", {"Observation": "5"}, False),
        ("required_categories", {"CarePlan": ["assess-plan"]}, True),
        ("well_known", 1, False),
    ],
)
def test_policy_values_are_type_checked(field: str, value: Any, expected: bool) -> None:
    assert conforms(value, get_type_hints(TenantPolicy)[field]) is expected


def test_parse_fault_builds_a_fault_spec() -> None:
    fault = parse_fault(
        {"kind": "throttle", "retry_after": 3, "rate": 0.5, "target": "Observation"}
    )

    assert (fault.kind, fault.retry_after, fault.rate, fault.target) == (
        "throttle",
        3,
        0.5,
        "Observation",
    )
    with pytest.raises(AdminError):
        parse_fault({"kind": "throttle", "rate": 1.5})
