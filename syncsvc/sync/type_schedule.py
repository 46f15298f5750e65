"""Each resource type's own schedule: when a type that failed is tried again, and when it is
``failing``.

A type whose requests still fail after the retries in place ends as ``transient_error`` with the
reason and the time of its next attempt; the rest of the record goes on. It is retried on its
own back-off while the connection's other types keep their normal schedule. Failing for
:data:`FAILING_AFTER` or :data:`FAILING_AFTER_RUNS` attempts in a row makes it ``failing``:
retried every few hours (:data:`FAILING_RETRY`), shown to the patient ("has not returned your
conditions since ...") and to operators (a tenant health rule, ``syncsvc_type_failures``).
Pure functions; the clock and the random source are parameters.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from syncsvc.db.models.records import SyncState
from syncsvc.sync.backoff import Backoff, RandomSource, system_random

#: Statuses of a type waiting for its own retry.
RETRYING = frozenset({"transient_error", "failing"})
#: A type that failed this many attempts in a row ...
FAILING_AFTER_RUNS = 5
#: ... or has failed for this long is ``failing``.
FAILING_AFTER = dt.timedelta(hours=24)
#: Back-off of a ``transient_error`` type: minutes at first, an hour at most.
TYPE_BACKOFF = Backoff(base_seconds=120.0, cap_seconds=3600.0, floor_seconds=60.0)
#: A ``failing`` type is tried again after between two and four hours (spread out, so the many
#: connections of a tenant where one search is broken do not all try at once).
FAILING_RETRY = Backoff(base_seconds=4 * 3600.0, cap_seconds=4 * 3600.0, floor_seconds=2 * 3600.0)


@dataclass(frozen=True)
class TypeFailure:
    """Where a type stands after one more failed attempt."""

    status: str
    failure_count: int
    failing_since: dt.datetime
    next_attempt_at: dt.datetime


def after_failure(
    previous: SyncState | None,
    *,
    attempt_at: dt.datetime,
    now: dt.datetime,
    retry_after: float | None = None,
    rand: RandomSource = system_random,
) -> TypeFailure:
    """The state of a type whose attempt that began at ``attempt_at`` failed transiently."""
    streak = previous is not None and previous.status in RETRYING
    count = (previous.failure_count if streak and previous is not None else 0) + 1
    since = attempt_at
    if streak and previous is not None and previous.failing_since is not None:
        since = previous.failing_since
    failing = count >= FAILING_AFTER_RUNS or now - since >= FAILING_AFTER
    policy = FAILING_RETRY if failing else TYPE_BACKOFF
    delay = policy.delay(count, retry_after=retry_after, rand=rand)
    return TypeFailure(
        "failing" if failing else "transient_error",
        count,
        since,
        now + dt.timedelta(seconds=delay),
    )


def waiting_until(state: SyncState | None, now: dt.datetime) -> dt.datetime | None:
    """When a type waiting for its own retry is due, or None if it is due now (or not waiting)."""
    if state is None or state.status not in RETRYING or state.next_attempt_at is None:
        return None
    return state.next_attempt_at if state.next_attempt_at > now else None
