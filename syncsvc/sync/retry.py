"""Retrying one FHIR request in place: which failures, how often, how long to wait.

A 502, 503 or 504, a 429 or 408, a timeout or a dropped connection on one GET is most often gone
a second later; ending the whole type (or run) on it leaves a new patient's record incomplete for
the length of a back-off. So the pull retries such a request a few times with jittered
exponential back-off, honouring ``Retry-After`` up to a cap, within the run's time budget. Only
GETs are retried (they are idempotent), and never a 4xx other than 429 and 408: the same request
would be refused again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from syncsvc.sync.backoff import Backoff

#: HTTP statuses worth asking again for, each with the reason a retry is counted under.
RETRY_STATUSES = {
    408: "http_408",
    429: "http_429",
    502: "http_502",
    503: "http_503",
    504: "http_504",
}


@dataclass(frozen=True)
class RetryPolicy:
    """How one run retries its requests in place."""

    #: Tries of one request in all (the first and its retries).
    attempts: int = 4
    #: Waits between tries without ``Retry-After`` (full jitter, doubling).
    backoff: Backoff = field(
        default_factory=lambda: Backoff(base_seconds=0.5, cap_seconds=30.0, floor_seconds=0.2)
    )
    #: A ``Retry-After`` longer than this is not waited out in place: the failure counts at once
    #: (the type, or for a 429 the connection, is retried later on its own schedule).
    max_retry_after: float = 30.0
    #: No retry starts once a run has lasted this long, or would end after it.
    budget_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.max_retry_after < 0 or self.budget_seconds < 0:
            raise ValueError("a retry policy needs attempts >= 1 and non-negative limits")


#: The policy of the sync engine.
DEFAULT_RETRY = RetryPolicy()


def retry_reason(status: int | None, transport_reason: str | None) -> str | None:
    """The reason a failed request is retried under, or None when it must not be retried.

    ``status`` is the HTTP status of an answered request; ``transport_reason`` the reason of a
    :class:`~syncsvc.fhir.client.RequestTransient`.
    """
    if status is not None:
        return RETRY_STATUSES.get(status)
    if transport_reason in ("timeout", "reset", "unreachable"):
        return transport_reason
    return None
