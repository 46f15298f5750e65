"""The ``status`` label of the EHR request counter: the EHR picks the status, not its values."""

from __future__ import annotations

import pytest

from syncsvc.fhir.client import KNOWN_STATUSES, status_label


@pytest.mark.parametrize("status", [200, 304, 401, 403, 404, 429, 500, 502, 503, 504])
def test_a_usual_status_is_counted_by_its_number(status: int) -> None:
    assert status_label(status) == str(status)


@pytest.mark.parametrize("status", [100, 207, 299, 418, 450, 599, 600, 999, 0, -1, 10_000])
def test_any_other_status_is_counted_as_other(status: int) -> None:
    assert status_label(status) == "other"


def test_the_label_has_a_bounded_set_of_values() -> None:
    values = {status_label(status) for status in range(-10, 100_000)}
    assert values == {str(s) for s in KNOWN_STATUSES} | {"other"}
    assert len(values) < 30
