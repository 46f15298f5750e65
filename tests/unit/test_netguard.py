"""Which addresses and endpoint URLs syncsvc sends EHR traffic to."""

from __future__ import annotations

import pytest

from syncsvc.netguard import endpoint_problem, is_public_address


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("127.8.9.10", False),
        ("::1", False),
        ("10.1.2.3", False),
        ("172.31.255.255", False),
        ("192.168.0.1", False),
        ("169.254.169.254", False),
        ("100.100.100.200", False),
        ("0.0.0.0", False),  # noqa: S104 - an address judged, never bound
        ("224.0.0.1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("fd00:ec2::254", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
        ("64:ff9b:1::a00:1", False),  # local-use NAT64 (RFC 8215): the operator's network
        ("64:ff9b:1:808:8:800::", False),
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("2002:a00:1::1", False),  # 6to4 of 10.0.0.1
        ("2002:a9fe:a9fe::", False),  # 6to4 of 169.254.169.254
        ("2002:808:808::1", True),  # 6to4 of 8.8.8.8
        ("::7f00:1", False),  # IPv4-compatible 127.0.0.1
        ("::a00:1", False),  # IPv4-compatible 10.0.0.1
        ("::808:808", True),  # IPv4-compatible 8.8.8.8
        ("::ffff:a9fe:a9fe", False),  # IPv4-mapped 169.254.169.254
        ("fec0::1", False),  # site-local (deprecated, still routed inside some sites)
        ("fef0::1", False),
        ("[::1]", False),
        ("not-an-address", False),
    ],
)
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(address) is public


@pytest.mark.parametrize(
    ("url", "loopback_tenant", "allowed"),
    [
        ("https://ehr.example/token", False, True),
        ("https://8.8.8.8/token", False, True),
        ("http://ehr.example/token", False, False),
        ("https://127.0.0.1/token", False, False),
        ("https://localhost/token", False, False),
        ("https://LOCALHOST/token", False, False),
        ("https://x.localhost/token", False, False),
        ("https://10.0.0.1/token", False, False),
        ("https://[::ffff:10.0.0.1]/token", False, False),
        ("ftp://ehr.example/token", False, False),
        ("/token", False, False),
        ("http://127.0.0.1:8765/token", True, True),
        ("http://localhost:8765/token", True, True),
        ("https://ehr.example/token", True, True),
        ("http://ehr.example/token", True, False),
        ("https://10.0.0.1/token", True, False),
    ],
)
def test_endpoint_problem(url: str, loopback_tenant: bool, allowed: bool) -> None:
    assert (endpoint_problem(url, loopback_tenant=loopback_tenant) is None) is allowed
