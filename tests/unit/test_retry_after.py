"""Reading ``Retry-After``: delta-seconds, HTTP-dates against a given clock, and junk."""

from __future__ import annotations

import datetime as dt
from email.utils import format_datetime

import pytest

from syncsvc.smart.vendor_errors import MAX_RETRY_AFTER, classify_fhir_failure, parse_retry_after
from syncsvc.sync.limits import MAX_TENANT_PAUSE, TenantGate, TenantLimits

NOW = dt.datetime(2026, 12, 5, 0, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        # The HTTP-date form, relative to the clock given.
        ("Sat, 05 Dec 2026 00:00:30 GMT", 30.0),
        ("Sat, 05 Dec 2026 00:10:00 GMT", 600.0),
        # Obsolete forms an EHR may still send (RFC 850, asctime), and a numeric zone.
        ("Saturday, 05-Dec-26 00:00:45 GMT", 45.0),
        ("Sat Dec  5 00:01:00 2026", 60.0),
        ("Sat, 05 Dec 2026 01:00:30 +0100", 30.0),
        # A date already past: no wait.
        ("Fri, 04 Dec 2026 23:00:00 GMT", 0.0),
        # Absurdly long waits are cut to the cap.
        ("99999999", MAX_RETRY_AFTER),
        ("1e400", MAX_RETRY_AFTER),
        ("Sun, 05 Dec 9999 00:00:00 GMT", MAX_RETRY_AFTER),
        # Neither form: ignored.
        ("-3", None),
        ("nan", None),
        ("soon", None),
        ("Mon, 99 Foo 2026 00:00:00 GMT", None),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_retry_after_is_read_in_both_forms_and_bounded(
    value: str | None, expected: float | None
) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_a_429s_date_reaches_the_failure() -> None:
    later = format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=20), usegmt=True)
    failure = classify_fhir_failure(429, None, later, b"")
    assert failure.kind == "throttled"
    assert failure.retry_after is not None
    # The date has whole seconds: between 18 and 20 seconds from now, whatever the machine.
    assert 18.0 <= failure.retry_after <= 20.0


def test_a_gate_pauses_for_a_429s_http_date_capped() -> None:
    clock = [100.0]
    gate = TenantGate(TenantLimits(1, 10.0, 10), clock=lambda: clock[0])
    soon = format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=10), usegmt=True)
    gate.throttled(soon)
    assert gate.throttles == 1
    assert 100.0 + 8.0 <= gate.bucket.paused_until <= 100.0 + 10.0
    much_later = format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(hours=2), usegmt=True)
    gate.throttled(much_later)
    assert gate.bucket.paused_until == 100.0 + MAX_TENANT_PAUSE
