"""Timing rules of background sync: retry backoff, the refresh schedule and scope narrowing."""

from __future__ import annotations

import datetime as dt

import pytest

from syncsvc.settings import Settings
from syncsvc.smart.oauth import TokenResponse
from syncsvc.sync.backoff import Backoff
from syncsvc.sync.refresh import RefreshSchedule, narrowed_scopes, next_refresh_at

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
POLICY = Backoff(base_seconds=10.0, cap_seconds=300.0, floor_seconds=1.0)


def test_the_jitter_window_doubles_per_attempt_up_to_the_cap() -> None:
    assert [POLICY.bound(n) for n in range(1, 8)] == [10, 20, 40, 80, 160, 300, 300]
    # Attempt counts from 1; nonsense counts behave like the first attempt.
    assert POLICY.bound(0) == POLICY.bound(-3) == 10


def test_a_long_outage_does_not_overflow() -> None:
    assert POLICY.bound(10_000) == 300
    assert POLICY.delay(10_000, rand=lambda: 1.0) == 300


def test_full_jitter_spans_floor_to_bound() -> None:
    assert POLICY.delay(3, rand=lambda: 0.0) == 1.0
    assert POLICY.delay(3, rand=lambda: 0.5) == pytest.approx(1.0 + 0.5 * 39.0)
    assert POLICY.delay(3, rand=lambda: 0.999999) == pytest.approx(40.0, abs=1e-3)


def test_out_of_range_random_values_are_clamped() -> None:
    assert POLICY.delay(2, rand=lambda: -1.0) == 1.0
    assert POLICY.delay(2, rand=lambda: 7.0) == 20.0


def test_retry_after_is_a_lower_bound() -> None:
    assert POLICY.delay(1, retry_after=60, rand=lambda: 0.0) == 60
    # A longer jitter draw wins over a short Retry-After.
    assert POLICY.delay(5, retry_after=2, rand=lambda: 1.0) == 160
    assert POLICY.delay(1, retry_after=0, rand=lambda: 0.0) == 1.0


def test_retry_after_beyond_the_cap_is_capped() -> None:
    assert POLICY.delay(1, retry_after=86_400, rand=lambda: 0.0) == 300


def test_the_default_random_source_stays_in_the_window() -> None:
    delays = [POLICY.delay(2) for _ in range(200)]
    assert all(1.0 <= delay <= 20.0 for delay in delays)
    assert len(set(delays)) > 1


def test_retry_at_adds_the_delay() -> None:
    assert POLICY.retry_at(NOW, 1, retry_after=30, rand=lambda: 0.0) == NOW + dt.timedelta(
        seconds=30
    )


@pytest.mark.parametrize(
    ("base", "cap", "floor"), [(10, 5, 1), (10, 20, 0), (10, 20, 11), (0, 0, 0)]
)
def test_inconsistent_policies_are_refused(base: float, cap: float, floor: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(base_seconds=base, cap_seconds=cap, floor_seconds=floor)


SCHEDULE = RefreshSchedule(
    margin=dt.timedelta(seconds=120),
    min_interval=dt.timedelta(seconds=60),
    keepalive=dt.timedelta(days=30),
)


def test_schedule_comes_from_settings() -> None:
    settings = Settings.for_tests(
        refresh_margin_seconds=90, min_refresh_interval_seconds=45, keepalive_days=7
    )
    assert RefreshSchedule.from_settings(settings) == RefreshSchedule(
        margin=dt.timedelta(seconds=90),
        min_interval=dt.timedelta(seconds=45),
        keepalive=dt.timedelta(days=7),
    )


def test_a_570_second_token_is_refreshed_120_seconds_ahead() -> None:
    due = next_refresh_at(
        SCHEDULE,
        now=NOW,
        access_expires_at=NOW + dt.timedelta(seconds=570),
        last_refresh_at=NOW,
    )
    assert due == NOW + dt.timedelta(seconds=450)


def test_a_short_token_is_not_refreshed_more_than_once_a_minute() -> None:
    due = next_refresh_at(
        SCHEDULE,
        now=NOW,
        access_expires_at=NOW + dt.timedelta(seconds=90),
        last_refresh_at=NOW,
    )
    assert due == NOW + dt.timedelta(seconds=60)


def test_the_minimum_interval_applies_only_after_a_refresh() -> None:
    due = next_refresh_at(
        SCHEDULE,
        now=NOW,
        access_expires_at=NOW + dt.timedelta(seconds=30),
        last_refresh_at=None,
        connected_at=NOW,
    )
    assert due == NOW - dt.timedelta(seconds=90)


def test_a_long_lived_token_is_still_refreshed_every_keepalive_period() -> None:
    last = NOW - dt.timedelta(days=3)
    due = next_refresh_at(
        SCHEDULE,
        now=NOW,
        access_expires_at=NOW + dt.timedelta(days=365),
        last_refresh_at=last,
    )
    assert due == last + dt.timedelta(days=30)


def test_keepalive_counts_from_the_launch_before_the_first_refresh() -> None:
    connected = NOW - dt.timedelta(days=40)
    due = next_refresh_at(
        SCHEDULE,
        now=NOW,
        access_expires_at=NOW + dt.timedelta(days=365),
        last_refresh_at=None,
        connected_at=connected,
    )
    assert due == connected + dt.timedelta(days=30)
    assert due < NOW


def test_an_unknown_expiry_is_due_now() -> None:
    due = next_refresh_at(SCHEDULE, now=NOW, access_expires_at=None, last_refresh_at=None)
    assert due == NOW


def test_without_a_refresh_token_the_next_look_is_at_expiry() -> None:
    expires = NOW + dt.timedelta(seconds=570)
    due = next_refresh_at(
        SCHEDULE,
        now=NOW,
        access_expires_at=expires,
        last_refresh_at=NOW - dt.timedelta(days=90),
        has_refresh_token=False,
    )
    assert due == expires


def _response(scope: str | None) -> TokenResponse:
    return TokenResponse(
        access_token="a",
        expires_at=0.0,
        scopes=tuple(scope.split()) if scope else (),
        scope_returned=scope is not None,
    )


RECORDED = ["launch/patient", "offline_access", "patient/Patient.read", "patient/Observation.read"]


def test_a_narrower_scope_is_recorded() -> None:
    response = _response("launch/patient offline_access patient/Patient.read")
    assert narrowed_scopes(RECORDED, response, holds_refresh_token=True) == RECORDED[:3]


def test_scopes_are_never_widened() -> None:
    response = _response(" ".join([*RECORDED, "patient/Condition.read"]))
    assert narrowed_scopes(RECORDED, response, holds_refresh_token=True) is None


def test_scope_comparison_ignores_case() -> None:
    response = _response("LAUNCH/PATIENT offline_access patient/patient.read")
    assert narrowed_scopes(RECORDED, response, holds_refresh_token=True) == RECORDED[:3]


def test_offline_access_is_kept_while_a_refresh_token_is_held() -> None:
    # Epic omits offline_access from every scope it returns.
    response = _response("launch/patient patient/Patient.read patient/Observation.read")
    assert narrowed_scopes(RECORDED, response, holds_refresh_token=True) is None
    assert narrowed_scopes(RECORDED, response, holds_refresh_token=False) == [
        "launch/patient",
        "patient/Patient.read",
        "patient/Observation.read",
    ]


@pytest.mark.parametrize("scope", [None, ""])
def test_no_scope_says_nothing_about_the_grant(scope: str | None) -> None:
    assert narrowed_scopes(RECORDED, _response(scope), holds_refresh_token=True) is None
