"""Timing rules of background sync: retry backoff, the refresh schedule and scope narrowing."""

from __future__ import annotations

import datetime as dt

import pytest

from syncsvc.settings import Settings
from syncsvc.smart.oauth import TokenResponse
from syncsvc.sync.backoff import Backoff
from syncsvc.sync.grant_states import rescoped
from syncsvc.sync.refresh_schedule import RefreshSchedule, next_refresh_at

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
POLICY = Backoff(base_seconds=10.0, cap_seconds=300.0, floor_seconds=1.0)


def test_the_jitter_window_doubles_per_attempt_up_to_the_cap() -> None:
    assert [POLICY.bound(n) for n in range(1, 8)] == [10, 20, 40, 80, 160, 300, 300]
    # Attempt counts from 1; nonsense counts behave like the first attempt.
    assert POLICY.bound(0) == POLICY.bound(-3) == 10


def test_a_long_outage_does_not_overflow() -> None:
    assert POLICY.bound(10_000) == 300
    assert POLICY.delay(10_000, rand=lambda: 1.0) == 300


@pytest.mark.parametrize(
    ("attempt", "retry_after", "draw", "expected"),
    [
        # Full jitter spans floor to bound.
        pytest.param(3, None, 0.0, 1.0, id="jitter-floor"),
        pytest.param(3, None, 0.5, pytest.approx(1.0 + 0.5 * 39.0), id="jitter-middle"),
        pytest.param(3, None, 0.999999, pytest.approx(40.0, abs=1e-3), id="jitter-bound"),
        # Out-of-range random values are clamped.
        pytest.param(2, None, -1.0, 1.0, id="draw-below-zero"),
        pytest.param(2, None, 7.0, 20.0, id="draw-above-one"),
        # Retry-After is a lower bound; a longer jitter draw wins over a short one.
        pytest.param(1, 60, 0.0, 60, id="retry-after-wins"),
        pytest.param(5, 2, 1.0, 160, id="jitter-beats-short-retry-after"),
        pytest.param(1, 0, 0.0, 1.0, id="retry-after-zero"),
        # Retry-After beyond the cap is capped.
        pytest.param(1, 86_400, 0.0, 300, id="retry-after-capped"),
    ],
)
def test_delay_is_jitter_between_floor_and_bound_never_below_retry_after(
    attempt: int, retry_after: float | None, draw: float, expected: object
) -> None:
    assert POLICY.delay(attempt, retry_after=retry_after, rand=lambda: draw) == expected


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


SYNC = NOW + dt.timedelta(hours=4)


@pytest.mark.parametrize(
    ("expires_in", "last_refresh", "connected", "next_sync", "has_refresh_token", "expected"),
    [
        # A 570-second token is refreshed when the next sync needs it, not ahead of its expiry.
        pytest.param(
            dt.timedelta(seconds=570), NOW, None, SYNC, True, SYNC,
            id="refreshed-for-the-next-sync",
        ),
        # A token that outlives the next sync by the margin is not refreshed for it ...
        pytest.param(
            dt.timedelta(hours=4, seconds=121), NOW, None, SYNC, True,
            NOW + dt.timedelta(days=30),
            id="outlives-the-next-sync",
        ),
        # ... one that does not is, at the sync.
        pytest.param(
            dt.timedelta(hours=4, seconds=120), NOW, None, SYNC, True, SYNC,
            id="short-at-the-next-sync",
        ),
        # A sync overdue now with a short token: due now (the sync's moment, past).
        pytest.param(
            dt.timedelta(seconds=30), None, NOW - dt.timedelta(days=1), NOW - dt.timedelta(hours=1),
            True, NOW - dt.timedelta(hours=1),
            id="overdue-sync-short-token",
        ),
        # No sync scheduled: only the keepalive, whatever the access token's expiry.
        pytest.param(
            dt.timedelta(seconds=570), NOW, None, None, True, NOW + dt.timedelta(days=30),
            id="no-sync-no-refresh-for-access",
        ),
        # A sync a few seconds ahead is not refreshed for more than once a minute ...
        pytest.param(
            dt.timedelta(seconds=90), NOW, None, NOW + dt.timedelta(seconds=10), True,
            NOW + dt.timedelta(seconds=60),
            id="at-most-once-a-minute",
        ),
        # ... but the minimum interval applies only after a refresh.
        pytest.param(
            dt.timedelta(seconds=30), None, NOW, NOW - dt.timedelta(seconds=90), True,
            NOW - dt.timedelta(seconds=90),
            id="no-minimum-before-the-first-refresh",
        ),
        # A long-lived token is still refreshed every keepalive period ...
        pytest.param(
            dt.timedelta(days=365), NOW - dt.timedelta(days=3), None, SYNC, True,
            NOW - dt.timedelta(days=3) + dt.timedelta(days=30),
            id="keepalive-after-a-refresh",
        ),
        # ... counted from the launch before the first refresh.
        pytest.param(
            dt.timedelta(days=365), None, NOW - dt.timedelta(days=40), SYNC, True,
            NOW - dt.timedelta(days=40) + dt.timedelta(days=30),
            id="keepalive-from-the-launch",
        ),
        # An unknown expiry is due now.
        pytest.param(None, None, None, SYNC, True, NOW, id="unknown-expiry"),
        # Without a refresh token the next look is at expiry.
        pytest.param(
            dt.timedelta(seconds=570), NOW - dt.timedelta(days=90), None, SYNC, False,
            NOW + dt.timedelta(seconds=570),
            id="no-refresh-token-looks-at-expiry",
        ),
    ],
)  # fmt: skip
def test_next_refresh_at(
    expires_in: dt.timedelta | None,
    last_refresh: dt.datetime | None,
    connected: dt.datetime | None,
    next_sync: dt.datetime | None,
    has_refresh_token: bool,
    expected: dt.datetime,
) -> None:
    due = next_refresh_at(
        SCHEDULE,
        now=NOW,
        access_expires_at=None if expires_in is None else NOW + expires_in,
        last_refresh_at=last_refresh,
        next_sync_at=next_sync,
        connected_at=connected,
        has_refresh_token=has_refresh_token,
    )
    assert due == expected


@pytest.mark.parametrize(
    ("refresh_life", "expected"),
    [
        # A refresh token living 8 days is renewed after 6 of them, whatever the syncs need.
        pytest.param(dt.timedelta(days=8), NOW + dt.timedelta(days=6), id="three-quarters"),
        # A short-lived one no later than the margin before it expires.
        pytest.param(
            dt.timedelta(seconds=300), NOW + dt.timedelta(seconds=180), id="margin-before-expiry"
        ),
        # One outliving the keepalive period: the keepalive comes first.
        pytest.param(dt.timedelta(days=365), NOW + dt.timedelta(days=30), id="keepalive-first"),
    ],
)
def test_an_expiring_refresh_token_is_kept_alive_without_syncs(
    refresh_life: dt.timedelta, expected: dt.datetime
) -> None:
    due = next_refresh_at(
        SCHEDULE,
        now=NOW,
        access_expires_at=NOW + dt.timedelta(days=400),
        last_refresh_at=NOW,
        next_sync_at=None,
        refresh_expires_at=NOW + refresh_life,
    )
    assert due == expected


def _response(scope: str | None) -> TokenResponse:
    return TokenResponse(
        access_token="a",
        expires_at=0.0,
        scopes=tuple(scope.split()) if scope else (),
        scope_returned=scope is not None,
    )


RECORDED = ["launch/patient", "offline_access", "patient/Patient.read", "patient/Observation.read"]
#: What the launch asked for: Condition was trimmed then; Goal was never asked for.
REQUESTED = [*RECORDED, "patient/Condition.read"]


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        pytest.param(
            "launch/patient offline_access patient/Patient.read", RECORDED[:3], id="narrower"
        ),
        # Widened only within what was requested at launch.
        pytest.param(
            " ".join([*RECORDED, "patient/Condition.read", "patient/Goal.read"]),
            [*RECORDED, "patient/Condition.read"],
            id="wider",
        ),
        # The comparison ignores case.
        pytest.param("LAUNCH/PATIENT offline_access patient/patient.read", RECORDED[:3], id="case"),
        # No scope says nothing about the grant.
        pytest.param(None, None, id="no-scope"),
        pytest.param("", None, id="empty-scope"),
    ],
)
def test_a_changed_returned_scope_is_recorded(
    scope: str | None, expected: list[str] | None
) -> None:
    returned = _response(scope).scopes
    result = rescoped(RECORDED, REQUESTED, returned, holds_refresh_token=True) if returned else None
    assert result == expected


def test_offline_access_is_kept_while_a_refresh_token_is_held() -> None:
    # Epic omits offline_access from every scope it returns.
    response = _response("launch/patient patient/Patient.read patient/Observation.read")
    assert rescoped(RECORDED, REQUESTED, response.scopes, holds_refresh_token=True) is None
    assert rescoped(RECORDED, REQUESTED, response.scopes, holds_refresh_token=False) == [
        "launch/patient",
        "patient/Patient.read",
        "patient/Observation.read",
    ]
