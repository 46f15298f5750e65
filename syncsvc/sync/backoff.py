"""Retry delays: exponential backoff with full jitter, honouring ``Retry-After``, capped.

Full jitter (a uniform draw between zero and the exponential bound) spreads the retries of many
connections that failed together, say during one EHR outage, instead of having them return in
lock step (AWS Architecture Blog, "Exponential Backoff And Jitter"). A server's ``Retry-After`` is
a lower bound: retrying earlier only earns another 429. Everything is pure; the random source is
a parameter so tests can pin it.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from dataclasses import dataclass

#: A source of floats uniform in [0, 1), like :func:`random.random`.
RandomSource = Callable[[], float]
#: Exponents beyond this cannot matter (2**32 times any sane base exceeds any sane cap), and
#: bounding it keeps ``2 ** attempt`` from overflowing a float after a long outage.
MAX_EXPONENT = 32


def system_random() -> float:
    # Jitter, not security: the standard generator is the right tool here.
    return random.random()  # noqa: S311


@dataclass(frozen=True)
class Backoff:
    """A retry policy: the first bound, the cap, and the shortest delay ever returned."""

    base_seconds: float = 15.0
    cap_seconds: float = 3600.0
    #: Even a zero jitter draw waits this long, so a failure never retries in a tight loop.
    floor_seconds: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.floor_seconds <= self.base_seconds <= self.cap_seconds:
            raise ValueError("backoff needs 0 < floor_seconds <= base_seconds <= cap_seconds")

    def bound(self, attempt: int) -> float:
        """The top of the jitter window after the ``attempt``-th consecutive failure (from 1)."""
        exponent = min(max(attempt, 1) - 1, MAX_EXPONENT)
        return float(min(self.cap_seconds, self.base_seconds * 2**exponent))

    def delay(
        self,
        attempt: int,
        *,
        retry_after: float | None = None,
        rand: RandomSource = system_random,
    ) -> float:
        """Seconds to wait after the ``attempt``-th consecutive failure.

        A uniform draw in ``[floor, bound(attempt)]``, raised to ``retry_after`` when the server
        asked for longer, and never above the cap.
        """
        draw = min(max(rand(), 0.0), 1.0)
        jittered = self.floor_seconds + draw * (self.bound(attempt) - self.floor_seconds)
        wanted = max(jittered, retry_after) if retry_after is not None else jittered
        return min(self.cap_seconds, wanted)

    def retry_at(
        self,
        now: dt.datetime,
        attempt: int,
        *,
        retry_after: float | None = None,
        rand: RandomSource = system_random,
    ) -> dt.datetime:
        """The time to try again after the ``attempt``-th consecutive failure at ``now``."""
        return now + dt.timedelta(seconds=self.delay(attempt, retry_after=retry_after, rand=rand))
