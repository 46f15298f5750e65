"""Per-tenant limits: the token bucket's arithmetic, connection slots, and the HTTP-edge hook."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from syncsvc.http import REQUEST_GATE, create_http_client
from syncsvc.sync.limits import (
    MAX_TENANT_PAUSE,
    VENDOR_LIMITS,
    TenantGate,
    TenantLimiter,
    TenantLimits,
    TokenBucket,
    limits_for,
)


class FakeTime:
    """A clock that only moves when the bucket sleeps (so the arithmetic is exact)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_a_bucket_lets_a_burst_through_then_paces_at_its_rate() -> None:
    time = FakeTime()
    bucket = TokenBucket(rate=2.0, capacity=3, clock=time.clock, sleep=time.sleep)
    for _ in range(3):
        await bucket.acquire()
    assert time.sleeps == []
    for _ in range(4):
        await bucket.acquire()
    assert time.sleeps == [0.5, 0.5, 0.5, 0.5]
    assert bucket.taken == 7
    assert bucket.waited == pytest.approx(2.0)


async def test_a_quiet_bucket_saves_up_no_more_than_its_capacity() -> None:
    time = FakeTime()
    bucket = TokenBucket(rate=10.0, capacity=2, clock=time.clock, sleep=time.sleep)
    await bucket.acquire()
    time.now += 3600  # an idle hour
    for _ in range(3):
        await bucket.acquire()
    assert time.sleeps == [pytest.approx(0.1)]


def test_limits_default_per_vendor_and_can_be_overridden() -> None:
    assert limits_for("cerner") == VENDOR_LIMITS["cerner"]
    assert limits_for("cerner").max_connections == 4
    assert limits_for("epic").requests_per_second == 10.0
    assert limits_for("generic").max_connections == 8
    assert limits_for("unknown-vendor") == VENDOR_LIMITS["generic"]
    special = TenantLimits(max_connections=1, requests_per_second=1.0, burst=1)
    limiter = TenantLimiter({"t-1": special})
    assert limiter.gate("t-1", "cerner").limits == special
    assert limiter.gate("t-2", "cerner").limits == VENDOR_LIMITS["cerner"]
    assert limiter.gate("t-2", "cerner") is limiter.gate("t-2", "cerner")
    lifted = TenantLimiter(default=special)
    assert lifted.gate("t-3", "epic").limits == special
    with pytest.raises(ValueError, match="positive"):
        TenantLimits(max_connections=0, requests_per_second=1.0, burst=1)


async def test_a_gate_never_works_more_connections_than_its_tenant_allows() -> None:
    gate = TenantGate(TenantLimits(max_connections=3, requests_per_second=1000.0, burst=1000))
    inside = 0
    most = 0

    async def work() -> None:
        nonlocal inside, most
        async with gate.working():
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            inside -= 1

    async with asyncio.timeout(10):
        await asyncio.gather(*(work() for _ in range(12)))
    assert most == 3
    assert gate.peak == 3
    assert gate.active == 0


@pytest.fixture
async def origin() -> AsyncIterator[str]:
    """A tiny HTTP server on loopback."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    app.router.add_post("/token", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def test_every_request_sent_while_working_a_tenant_is_charged_to_its_bucket(
    origin: str,
) -> None:
    gate = TenantGate(TenantLimits(max_connections=2, requests_per_second=1000.0, burst=1000))
    async with create_http_client(total_seconds=10) as http:
        async with gate.working():
            for _ in range(3):
                async with http.get(f"{origin}/") as response:
                    assert response.status == 200
            async with http.post(f"{origin}/token", data={"grant_type": "x"}) as response:
                assert response.status == 200
        assert REQUEST_GATE.get() is None
        # Outside any tenant's work (a launch, discovery), nothing is charged.
        async with http.get(f"{origin}/") as response:
            assert response.status == 200
    assert gate.bucket.taken == 4


async def test_a_paused_bucket_gives_nothing_until_the_pause_ends_then_keeps_its_rate() -> None:
    time = FakeTime()
    bucket = TokenBucket(rate=2.0, capacity=5, clock=time.clock, sleep=time.sleep)
    await bucket.acquire()
    bucket.pause(3.0)
    bucket.pause(1.0)  # a shorter pause heard later does not cut the longer one short
    for _ in range(3):
        await bucket.acquire()
    # Three seconds of pause, then one token at once (none saved up), then the rate.
    assert time.sleeps == [pytest.approx(3.0), pytest.approx(0.5), pytest.approx(0.5)]
    assert time.now == pytest.approx(4.0)


async def test_a_pause_heard_while_a_request_waits_for_the_rate_holds_it_too() -> None:
    time = FakeTime()
    bucket = TokenBucket(rate=2.0, capacity=1, clock=time.clock, sleep=time.sleep)
    await bucket.acquire()  # the one saved-up token: the next request waits 0.5 s for the rate
    heard = False

    async def sleep(seconds: float) -> None:
        nonlocal heard
        await time.sleep(seconds)
        if not heard:
            heard = True
            bucket.pause(3.0)  # another connection's 429 arrives during that wait

    bucket._sleep = sleep
    await bucket.acquire()
    # Not sent at 0.5 s, in the pause: only once it ended, 3.5 s in.
    assert time.now >= bucket.paused_until == pytest.approx(3.5)
    assert time.sleeps == [pytest.approx(0.5), pytest.approx(3.0)]


async def test_a_sleep_that_ends_a_hair_early_still_sees_the_pause_out() -> None:
    time = FakeTime()

    async def early(seconds: float) -> None:
        await time.sleep(seconds * 0.999)  # an event loop may wake a timer a little early

    bucket = TokenBucket(rate=10.0, capacity=5, clock=time.clock, sleep=early)
    bucket.pause(2.0)
    await bucket.acquire()
    assert time.now >= bucket.paused_until == 2.0
    assert len(time.sleeps) >= 2


def test_a_gate_pauses_for_a_429s_retry_after_capped_and_not_without_one() -> None:
    time = FakeTime()
    gate = TenantGate(TenantLimits(1, 10.0, 10), clock=time.clock)
    gate.bucket = TokenBucket(10.0, 10, clock=time.clock, sleep=time.sleep)
    gate.throttled(None)
    gate.throttled("soon")
    assert (gate.throttles, gate.bucket.paused_until) == (0, 0.0)
    gate.throttled("7")
    assert (gate.throttles, gate.bucket.paused_until) == (1, 7.0)
    gate.throttled("3600")
    assert gate.bucket.paused_until == MAX_TENANT_PAUSE
