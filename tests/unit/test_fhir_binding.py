"""The base binding: a token goes only to URLs under the exact base it was issued for."""

from __future__ import annotations

import pytest

from syncsvc.fhir.ids import is_fhir_id
from syncsvc.fhir.urls import is_under_base

BASE = "https://fhir.example.com/r4/ec2458f2"


@pytest.mark.parametrize(
    "url",
    [
        "https://fhir.example.com/r4/ec2458f2",
        "https://fhir.example.com/r4/ec2458f2/Observation?patient=1",
        "https://FHIR.example.com/r4/ec2458f2/Observation?pageContext=x&direction=NEXT",
    ],
)
def test_urls_under_the_base_are_accepted(url: str) -> None:
    assert is_under_base(url, BASE)


@pytest.mark.parametrize(
    "url",
    [
        "http://fhir.example.com/r4/ec2458f2/Observation",  # scheme downgrade
        "https://fhir.example.com:8443/r4/ec2458f2/Observation",  # other port
        "https://fhir.example.com/r4/ec2458f2-other/Observation",  # sibling tenant, same prefix
        "https://fhir.example.com/r4/other/Observation",  # other tenant
        "https://evil.example.com/r4/ec2458f2/Observation",  # other host
        "https://fhir.example.com.evil.example/r4/ec2458f2/Observation",
        "https://user:pw@fhir.example.com/r4/ec2458f2/Observation",
        "/r4/ec2458f2/Observation",  # relative
        # Dot segments and encoded slashes: checked as written, sent resolved to another tenant.
        "https://fhir.example.com/r4/ec2458f2/../other/Observation",
        "https://fhir.example.com/r4/ec2458f2/%2e%2e/other/Observation",
        "https://fhir.example.com/r4/ec2458f2/%2E%2E/%2E%2E/r4/other/Patient/1",
        "https://fhir.example.com/r4/ec2458f2/./Observation",
        "https://fhir.example.com/r4/ec2458f2/Patient%2F..%2F..%2Fother",
        # Path parameters and double encoding: ".." to Tomcat/Spring or to a decoding proxy.
        "https://fhir.example.com/r4/ec2458f2/..;/other/Observation",
        "https://fhir.example.com/r4/ec2458f2/..;x=1/..;/r4/other/Patient/1",
        "https://fhir.example.com/r4/ec2458f2/%2e%2e;/other/Observation",
        "https://fhir.example.com/r4/ec2458f2/%252e%252e/other/Observation",
        "https://fhir.example.com/r4/ec2458f2/%25252e%25252e/other/Observation",
        "https://fhir.example.com/r4/ec2458f2/.%2e/other/Observation",
        "https://fhir.example.com/r4/ec2458f2/%2e./other/Observation",
        "https://fhir.example.com/r4/ec2458f2/Observation;jsessionid=1",
        "https://fhir.example.com/r4/ec2458f2/%00/Observation",
        "https://fhir.example.com/r4/ec2458f2/%EF%BC%8E%EF%BC%8E/other",  # fullwidth dots
        "https://fhir.example.com/r4/ec2458f2/Observation%5C..%5C..%5Cother",
    ],
)
def test_urls_outside_the_base_are_refused(url: str) -> None:
    assert not is_under_base(url, BASE)


@pytest.mark.parametrize("value", ["12724066", "a-b.c", "X" * 64])
def test_fhir_ids_are_accepted(value: str) -> None:
    assert is_fhir_id(value)


@pytest.mark.parametrize("value", ["", "..", ".", "../other/Patient/1", "a/b", "a%2Fb", "X" * 65])
def test_ids_that_could_change_a_url_path_are_refused(value: str) -> None:
    assert not is_fhir_id(value)
