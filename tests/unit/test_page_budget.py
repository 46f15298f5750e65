"""The process-wide page budget: all-or-nothing reservations, first come first served."""

from __future__ import annotations

import asyncio
import pickle

import pytest

from syncsvc.fhir.page_limits import PageBudget, PageTooLarge
from syncsvc.fhir.plans import plan_for


async def test_a_waiting_big_page_is_not_overtaken_and_the_budget_is_never_exceeded() -> None:
    budget = PageBudget(100)
    first = await budget.reserve(60)
    big = asyncio.ensure_future(budget.reserve(80))
    small = asyncio.ensure_future(budget.reserve(10))
    await asyncio.sleep(0)
    # 10 bytes would fit, but the 80-byte page came first and holds the line.
    assert not big.done()
    assert not small.done()
    assert budget.waits == 2
    first.release()
    held = await big
    # Both fit now, and both are granted in their order.
    assert small.done()
    assert budget.in_flight == 90
    (await small).release()
    held.shrink(30)
    assert budget.in_flight == 30
    held.release()
    held.release()  # idempotent
    assert budget.in_flight == 0
    assert budget.peak == 90


async def test_a_cancelled_waiter_gives_its_place_to_the_next() -> None:
    budget = PageBudget(100)
    first = await budget.reserve(100)
    stuck = asyncio.ensure_future(budget.reserve(100))
    after = asyncio.ensure_future(budget.reserve(50))
    await asyncio.sleep(0)
    stuck.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stuck
    first.release()
    (await asyncio.wait_for(after, 1)).release()
    assert budget.in_flight == 0


def test_a_request_larger_than_the_budget_is_clamped_to_it() -> None:
    async def reserve() -> int:
        budget = PageBudget(10)
        return (await budget.reserve(50)).size

    assert asyncio.run(reserve()) == 10


def test_tenant_wide_page_caps_come_from_the_star_override() -> None:
    plan = plan_for("cerner", {"*": {"max_page_bytes": 1024, "max_page_entries": 5}})
    assert (plan.max_page_bytes, plan.max_page_entries) == (1024, 5)
    assert plan.for_type("Observation").count == 200  # the vendor's plan is kept
    for bad in ({"max_page_bytes": 0}, {"max_page_entries": "5"}, {"count": 5}):
        with pytest.raises(ValueError, match=r"max_page|unknown"):
            plan_for("generic", {"*": bad})


def test_page_too_large_survives_a_trip_through_pickle() -> None:
    error = pickle.loads(pickle.dumps(PageTooLarge("entries", 7)))  # noqa: S301 - our own
    assert (error.reason, error.limit) == ("page_too_large", 7)
    assert "7 entries" in error.message
