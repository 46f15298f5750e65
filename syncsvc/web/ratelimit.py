"""Per-key request rates of this process: a token bucket per session, link or API key.

Starting a launch writes a launch attempt and sends the browser to an EHR; issuing a link writes
a row; a type-ahead search queries the directory. None may be repeated without limit by one
patient session, connect link or host application, so each has a bucket of ``burst`` requests
that refills at ``per_hour`` (or ``per_minute``) a key. A refused request learns when its next
one would be allowed (``Retry-After``).

Buckets live in one process: N ``serve`` processes behind a balancer together allow N times
the rate. Idle buckets are forgotten once there are many, so the limiter's own memory is bounded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

#: Buckets kept before full (idle) ones are dropped.
MAX_KEYS = 10_000


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class KeyedRateLimiter:
    """Token buckets by key: ``burst`` at once, refilled at ``rate`` tokens a second."""

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limit needs a positive rate and burst")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        #: Requests refused so far (for logs and tests).
        self.refused = 0

    def take(self, key: str) -> int | None:
        """Take one request for ``key``: None if allowed, else the seconds to wait (at least 1)."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_KEYS:
                self._forget_idle(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return None
        self.refused += 1
        return max(1, math.ceil((1 - bucket.tokens) / self.rate))

    def _forget_idle(self, now: float) -> None:
        full = [
            key
            for key, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.stamp) * self.rate >= self.burst
        ]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= MAX_KEYS:  # all busy: the oldest go
            oldest = sorted(self._buckets, key=lambda k: self._buckets[k].stamp)
            for key in oldest[: len(oldest) // 2]:
                del self._buckets[key]


@dataclass(frozen=True)
class RateLimits:
    """The limiters of one web application."""

    #: ``POST /connect/start`` per patient session.
    connect_start: KeyedRateLimiter
    #: ``POST /api/v1/connect-links`` per API key.
    link_creation: KeyedRateLimiter
    #: ``GET /connect/search`` (the picker's type-ahead) per connect link or patient session.
    picker_search: KeyedRateLimiter
