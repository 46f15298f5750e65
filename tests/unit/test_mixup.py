"""The mix-up defence's rules: which callback a redirect URI names, and when ``iss`` is accepted."""

from __future__ import annotations

import pytest

from syncsvc.errors import LaunchError
from syncsvc.smart.mixup import (
    callback_tenant_of,
    check_callback_route,
    check_response_issuer,
    tenant_callback_uri,
)

ISSUER = "https://ehr.example/auth"


@pytest.mark.parametrize(
    ("redirect_uri", "tenant"),
    [
        ("https://sync.example/callback", None),
        ("https://sync.example/callback/", None),
        ("https://sync.example/callback/clinic", "clinic"),
        ("https://sync.example/prefix/callback/clinic", "clinic"),
        ("https://sync.example/callback/a%20b", "a b"),
        ("https://sync.example/other/clinic", None),
    ],
)
def test_callback_tenant_of(redirect_uri: str, tenant: str | None) -> None:
    assert callback_tenant_of(redirect_uri) == tenant


def test_tenant_callback_uri_round_trips_odd_names() -> None:
    for name in ("clinic", "a b", "x/y", "ünï"):
        assert callback_tenant_of(tenant_callback_uri("https://sync.example/", name)) == name


def test_callback_route() -> None:
    check_callback_route(redirect_uri="https://s/callback/a", arrived_for="a", display_name="A")
    check_callback_route(redirect_uri="https://s/callback", arrived_for=None, display_name="A")
    for redirect, arrived in (("https://s/callback/a", "b"), ("https://s/callback/a", None)):
        with pytest.raises(LaunchError) as caught:
            check_callback_route(redirect_uri=redirect, arrived_for=arrived, display_name="A")
        assert caught.value.reason == "callback_mismatch"
    with pytest.raises(LaunchError):
        check_callback_route(redirect_uri="https://s/callback", arrived_for="a", display_name="A")


@pytest.mark.parametrize(
    ("iss", "issuer", "required", "own", "reason"),
    [
        (ISSUER, ISSUER, True, True, None),
        (ISSUER, ISSUER, False, False, None),
        (None, ISSUER, False, False, None),
        (None, ISSUER, True, True, "iss_missing"),
        ("https://other.example/auth", ISSUER, False, True, "iss_mismatch"),
        (ISSUER + "/", ISSUER, False, True, "iss_mismatch"),
        # No issuer known (CapabilityStatement discovery): only the tenant's own callback vouches.
        (ISSUER, None, False, True, None),
        (ISSUER, None, False, False, "iss_mismatch"),
    ],
)
def test_response_issuer(
    iss: str | None, issuer: str | None, required: bool, own: bool, reason: str | None
) -> None:
    def check() -> None:
        check_response_issuer(
            iss=iss, issuer=issuer, iss_required=required, own_callback=own, display_name="A"
        )

    if reason is None:
        check()
        return
    with pytest.raises(LaunchError) as caught:
        check()
    assert caught.value.reason == reason
