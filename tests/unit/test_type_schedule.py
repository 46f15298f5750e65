"""A failed type's own schedule: back-off, the failing threshold, and the slow cadence."""

from __future__ import annotations

import datetime as dt

from syncsvc.db.models.records import SyncState
from syncsvc.sync.type_schedule import (
    FAILING_AFTER,
    FAILING_AFTER_RUNS,
    FAILING_RETRY,
    TYPE_BACKOFF,
    after_failure,
    waiting_until,
)

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)


def _state(
    status: str, count: int, since: dt.datetime | None, next_at: dt.datetime | None = None
) -> SyncState:
    return SyncState(
        connection_id="c",
        resource_type="Condition",
        status=status,
        failure_count=count,
        failing_since=since,
        next_attempt_at=next_at,
        updated_at=NOW,
    )


def test_a_first_failure_backs_off_minutes_and_starts_the_streak() -> None:
    after = after_failure(None, attempt_at=NOW, now=NOW, rand=lambda: 1.0)
    assert after.status == "transient_error"
    assert (after.failure_count, after.failing_since) == (1, NOW)
    assert after.next_attempt_at == NOW + dt.timedelta(seconds=TYPE_BACKOFF.bound(1))


def test_a_retry_after_longer_than_the_back_off_is_honoured() -> None:
    after = after_failure(None, attempt_at=NOW, now=NOW, retry_after=900, rand=lambda: 0.0)
    assert after.next_attempt_at == NOW + dt.timedelta(seconds=900)


def test_a_success_in_between_restarts_the_streak() -> None:
    ok = _state("ok", 0, None)
    after = after_failure(ok, attempt_at=NOW, now=NOW, rand=lambda: 0.0)
    assert (after.status, after.failure_count, after.failing_since) == ("transient_error", 1, NOW)


def test_enough_failures_in_a_row_make_a_type_failing_retried_every_few_hours() -> None:
    since = NOW - dt.timedelta(hours=1)
    previous = _state("transient_error", FAILING_AFTER_RUNS - 1, since)
    after = after_failure(previous, attempt_at=NOW, now=NOW, rand=lambda: 0.0)
    assert after.status == "failing"
    assert after.failing_since == since
    assert after.next_attempt_at == NOW + dt.timedelta(seconds=FAILING_RETRY.floor_seconds)


def test_failing_for_long_enough_makes_a_type_failing_whatever_the_count() -> None:
    since = NOW - FAILING_AFTER
    after = after_failure(_state("transient_error", 1, since), attempt_at=NOW, now=NOW)
    assert (after.status, after.failure_count) == ("failing", 2)
    below = after_failure(
        _state("transient_error", 1, since + dt.timedelta(minutes=1)), attempt_at=NOW, now=NOW
    )
    assert below.status == "transient_error"


def test_only_a_type_waiting_for_its_retry_waits() -> None:
    later = NOW + dt.timedelta(minutes=5)
    assert waiting_until(_state("transient_error", 1, NOW, later), NOW) == later
    assert waiting_until(_state("failing", 5, NOW, later), NOW) == later
    assert waiting_until(_state("failing", 5, NOW, NOW), NOW) is None  # due now
    assert waiting_until(_state("ok", 0, None, later), NOW) is None
    assert waiting_until(None, NOW) is None
