"""Per-tenant limits in one process: connections worked at once, and a request-rate budget.

EHRs throttle per client registration and tenant (Cerner answers bursts with 429; Epic's merged
token endpoint answers overload with HTML), so the runner works at most ``max_connections`` of
one tenant's connections at a time, and every request made while working them (FHIR searches
and reads, token refreshes) first takes a token from the tenant's bucket. The bucket is charged
at the HTTP edge: the runner installs the tenant's gate in :data:`syncsvc.http.REQUEST_GATE`
for the task working the connection, and the process's outbound client awaits it before each
request, so neither the pull engine nor the token client needs to know about limits.

Limits hold in one process; N processes sharing a database may together send N times the
budget. Defaults are per vendor profile (``VENDOR_LIMITS``); a tenant can be given its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

from syncsvc.http import REQUEST_GATE

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
        #: Tokens taken, and the seconds spent waiting for them (for logs and tests).
        self.taken = 0
        self.waited = 0.0

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self) -> None:
        """Take one token, waiting until one is available."""
        async with self._lock:
            self._refill()
            if self._tokens < 1:
                wait = (1 - self._tokens) / self.rate
                self.waited += wait
                await self._sleep(wait)
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

    async def pace(self) -> None:
        """Wait for the tenant's request budget (the hook the HTTP client awaits)."""
        await self.bucket.acquire()

    @contextlib.asynccontextmanager
    async def working(self) -> AsyncIterator[None]:
        """Hold one of the tenant's connection slots, and pace this task's requests."""
        async with self._slots:
            self.active += 1
            self.peak = max(self.peak, self.active)
            token = REQUEST_GATE.set(self.pace)
            try:
                yield
            finally:
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

    def gate(self, tenant_id: str, vendor: str) -> TenantGate:
        """The gate of ``tenant_id`` (a ``vendor`` tenant)."""
        gate = self._gates.get(tenant_id)
        if gate is None:
            limits = self._overrides.get(tenant_id) or self._default or limits_for(vendor)
            gate = self._gates[tenant_id] = TenantGate(limits)
        return gate
