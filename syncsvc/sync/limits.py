"""Per-tenant limits in one process: connections worked at once, and a request-rate budget.

EHRs throttle per client registration and tenant (Cerner answers bursts with 429; Epic's merged
token endpoint answers overload with HTML), so the runner works at most ``max_connections`` of
one tenant's connections at a time, and every request made while working them (FHIR searches
and reads, token refreshes) first takes a token from the tenant's bucket. The bucket is charged
at the HTTP edge: the runner installs the tenant's gate in :data:`syncsvc.http.REQUEST_GATE`
for the task working the connection, and the process's outbound client awaits it before each
request, so neither the pull engine nor the token client needs to know about limits.

A 429 is the tenant speaking for all its connections: the HTTP client tells the gate of the
task that got it (:data:`syncsvc.http.THROTTLE_LISTENER`), and the tenant's bucket gives no
token to any connection until its ``Retry-After`` has passed (up to :data:`MAX_TENANT_PAUSE`),
then resumes at its normal rate.

Limits hold in one process; N processes sharing a database may together send N times the
budget (and each hears only its own 429s). Defaults are per vendor profile (``VENDOR_LIMITS``);
a tenant can be given its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

from syncsvc.http import REQUEST_GATE, THROTTLE_LISTENER
from syncsvc.smart.vendor_errors import parse_retry_after

#: A monotonic clock in seconds and a sleep, injectable so the bucket can be tested exactly.
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class TenantLimits:
    """How hard one process may drive one tenant."""

    #: Connections of the tenant worked at the same time.
    max_connections: int
    #: Sustained requests per second (FHIR and token requests together).
    requests_per_second: float
    #: Requests that may go at once after a quiet spell (the bucket's capacity).
    burst: int

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.requests_per_second <= 0 or self.burst < 1:
            raise ValueError("tenant limits must be positive")


#: The longest a tenant's 429 pauses its connections in this process: a connection waiting
#: holds one of the process's slots, so a tenant asking for minutes must not stall the others.
#: A request asked to wait longer is not retried in place; its run backs off instead.
MAX_TENANT_PAUSE = 30.0

#: Defaults by vendor profile. Oracle Health (Cerner) and Epic throttle per application; ten
#: requests a second with four patients in flight stays well inside what both tolerate.
VENDOR_LIMITS: Mapping[str, TenantLimits] = {
    "cerner": TenantLimits(max_connections=4, requests_per_second=10.0, burst=10),
    "epic": TenantLimits(max_connections=4, requests_per_second=10.0, burst=10),
    "generic": TenantLimits(max_connections=8, requests_per_second=20.0, burst=20),
}


def limits_for(vendor: str) -> TenantLimits:
    """The default limits of a vendor profile (``generic`` for an unknown one)."""
    return VENDOR_LIMITS.get(vendor, VENDOR_LIMITS["generic"])


#: How many times one acquire re-checks a pause that was lengthened while it slept.
_MAX_PAUSE_CHECKS = 100


class TokenBucket:
    """A token bucket: ``rate`` tokens a second, at most ``capacity`` saved up.

    Waiters are served first come, first served (``asyncio.Lock`` is fair), so one busy
    connection cannot starve the others of the same tenant.
    """

    def __init__(
        self,
        rate: float,
        capacity: int,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate <= 0 or capacity < 1:
            raise ValueError("a token bucket needs a positive rate and capacity")
        self.rate = rate
        self.capacity = float(capacity)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(capacity)
        self._stamp = clock()
        self._lock = asyncio.Lock()
        #: No token is given before this (a 429's ``Retry-After``).
        self.paused_until = 0.0
        #: Tokens taken, and the seconds spent waiting for them (for logs and tests).
        self.taken = 0
        self.waited = 0.0

    def _refill(self) -> None:
        now = self._clock()
        if now <= self._stamp:
            return  # paused: nothing accrues until the pause ends
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def _out_of_pause(self) -> None:
        """Sleep until no pause holds; a pause lengthened meanwhile is slept out too."""
        # Bounded: each pass sleeps out what is left (a sleep may end a hair early).
        for _ in range(_MAX_PAUSE_CHECKS):
            paused = self.paused_until - self._clock()
            if paused <= 0:
                return
            self.waited += paused
            await self._sleep(paused)

    def pause(self, seconds: float) -> None:
        """Give no token for ``seconds`` from now; then one, then the normal rate.

        Tokens saved up before are dropped and none accrue during the pause, so the requests
        that waited do not all go at once when it ends.
        """
        until = self._clock() + seconds
        if until <= self.paused_until:
            return
        self.paused_until = until
        self._tokens = min(self._tokens, 1.0)
        self._stamp = max(self._stamp, until)

    async def acquire(self) -> None:
        """Take one token, waiting until one is available (and any pause has ended)."""
        async with self._lock:
            await self._out_of_pause()
            self._refill()
            if self._tokens < 1:
                wait = (1 - self._tokens) / self.rate
                self.waited += wait
                await self._sleep(wait)
                # A 429 heard during that wait pauses this request too: it is not sent yet.
                await self._out_of_pause()
                self._refill()
            # A sleep that came back a little early leaves the balance just below zero; the
            # next caller waits it off, so the long-run rate still holds.
            self._tokens -= 1
            self.taken += 1


class TenantGate:
    """One tenant's limits in this process: connection slots and the request bucket."""

    def __init__(self, limits: TenantLimits, *, clock: Clock = time.monotonic) -> None:
        self.limits = limits
        self._slots = asyncio.Semaphore(limits.max_connections)
        self.bucket = TokenBucket(limits.requests_per_second, limits.burst, clock=clock)
        self.active = 0
        #: The most connections of this tenant ever worked at once (for tests and logs).
        self.peak = 0
        #: 429s with a Retry-After heard from this tenant (for logs and tests).
        self.throttles = 0

    async def pace(self) -> None:
        """Wait for the tenant's request budget (the hook the HTTP client awaits)."""
        await self.bucket.acquire()

    def throttled(self, retry_after: str | None) -> None:
        """The tenant answered 429: pause its requests for ``Retry-After`` (capped).

        Without a ``Retry-After`` the request's own back-off decides; the others go on.
        """
        seconds = parse_retry_after(retry_after)
        if seconds:
            self.throttles += 1
            self.bucket.pause(min(seconds, MAX_TENANT_PAUSE))

    @contextlib.asynccontextmanager
    async def working(self) -> AsyncIterator[None]:
        """Hold one of the tenant's connection slots, and pace this task's requests."""
        async with self._slots:
            self.active += 1
            self.peak = max(self.peak, self.active)
            token = REQUEST_GATE.set(self.pace)
            listening = THROTTLE_LISTENER.set(self.throttled)
            try:
                yield
            finally:
                THROTTLE_LISTENER.reset(listening)
                REQUEST_GATE.reset(token)
                self.active -= 1


class TenantLimiter:
    """The gates of every tenant this process works, made on first use."""

    def __init__(
        self,
        overrides: Mapping[str, TenantLimits] | None = None,
        *,
        default: TenantLimits | None = None,
    ) -> None:
        #: Limits by tenant id that replace the vendor default.
        self._overrides = dict(overrides or {})
        #: Limits for every other tenant instead of its vendor's (benchmarks lift them).
        self._default = default
        self._gates: dict[str, TenantGate] = {}

    def working(self) -> int:
        """Connections being worked now, over every tenant (for benchmarks and logs)."""
        return sum(gate.active for gate in self._gates.values())

    def gate(self, tenant_id: str, vendor: str) -> TenantGate:
        """The gate of ``tenant_id`` (a ``vendor`` tenant)."""
        gate = self._gates.get(tenant_id)
        if gate is None:
            limits = self._overrides.get(tenant_id) or self._default or limits_for(vendor)
            gate = self._gates[tenant_id] = TenantGate(limits)
        return gate
