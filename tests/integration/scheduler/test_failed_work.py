"""Work that fails in a way nobody classified (a bug one record trips, a database refusing a
connection) is retried after a back-off that grows, never at the next tick."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import aiohttp
import pytest

from syncsvc.sandbox.server import RunningSandbox
from syncsvc.settings import Settings
from syncsvc.sync import runner
from syncsvc.sync.runner import SYNC_BACKOFF, run_due
from syncsvc.vault import Vault
from tests.fixtures.sandbox import GENERIC_TENANT

from . import Sessionmaker, connect_many, connections, contexts


async def test_work_that_fails_unexpectedly_waits_a_growing_back_off_before_it_is_tried_again(
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, (connection_id,) = await connect_many(sessionmaker, vault, http, sandbox, GENERIC_TENANT, 1)
    pulls = 0

    async def tripped(*args: Any, **kwargs: Any) -> None:
        nonlocal pulls
        pulls += 1
        raise RuntimeError("a record that trips a bug")

    monkeypatch.setattr(runner, "pull_connection", tripped)
    moment = dt.datetime.now(dt.UTC)
    async with contexts(settings, sessionmaker, vault, 1) as (made,):
        ctx = dataclasses.replace(made, clock=lambda: moment)
        first = await run_due(ctx)
        failed = (await connections(sessionmaker))[connection_id]
        # The next tick, at the same moment: the connection is not claimed again.
        next_tick = await run_due(ctx)
        # Once the first back-off (at most its bound) has passed, it is tried again.
        moment += dt.timedelta(seconds=SYNC_BACKOFF.bound(1) + 1)
        later = await run_due(ctx)
        again = (await connections(sessionmaker))[connection_id]

    assert (first.claimed, first.failures) == (1, 1)
    assert failed.lease_owner is None
    assert failed.failure_count == 1
    assert failed.backoff_until is not None
    assert failed.backoff_until >= moment - dt.timedelta(seconds=SYNC_BACKOFF.bound(1))
    assert next_tick.claimed == 0
    assert (later.claimed, later.failures) == (1, 1)
    assert pulls == 2
    assert again.failure_count == 2
    assert again.backoff_until is not None
    assert again.backoff_until > moment
