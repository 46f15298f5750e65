"""The token source's memory: one load at a time, however many types ask at once."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import cast

from syncsvc.sync.context import SyncContext
from syncsvc.sync.credentials import StoredTokens
from syncsvc.sync.token_source import TokenSource

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


class _Loader(TokenSource):
    """A token source whose loads hand out token-1, token-2, ... (each living 570 s), once released.

    Only the loading is replaced (no database): what is under test is the memory in front of it.
    """

    def __init__(self) -> None:
        super().__init__(cast("SyncContext", None), "c-1", clock=lambda: NOW)
        self.calls: list[bool] = []
        self.release = asyncio.Event()

    async def tokens(self, force: bool = False) -> StoredTokens:
        self.calls.append(force)
        await asyncio.wait_for(self.release.wait(), timeout=5)
        number = len(self.calls)
        expires = NOW + dt.timedelta(seconds=570)
        return StoredTokens("c-1", number, f"token-{number}", expires, "refresh", None)


async def _settled(*calls: asyncio.Future[str]) -> list[str]:
    await asyncio.sleep(0)  # every caller has asked before the load returns
    return list(await asyncio.wait_for(asyncio.gather(*calls), timeout=5))


async def test_callers_asking_at_once_share_one_load() -> None:
    loader = _Loader()
    source = loader
    callers = [asyncio.ensure_future(source(False)) for _ in range(3)]
    loader.release.set()

    assert await _settled(*callers) == ["token-1"] * 3
    assert loader.calls == [False]


async def test_a_token_refused_to_several_requests_at_once_is_forced_once() -> None:
    loader = _Loader()
    loader.release.set()
    source = loader
    assert await source(False) == "token-1"
    loader.release.clear()

    refused = [asyncio.ensure_future(source(True)) for _ in range(3)]
    loader.release.set()

    assert await _settled(*refused) == ["token-2"] * 3
    assert loader.calls == [False, True]


async def test_a_replacement_refused_in_turn_is_forced_again() -> None:
    loader = _Loader()
    loader.release.set()
    source = loader

    assert [await source(False), await source(True), await source(True)] == [
        "token-1",
        "token-2",
        "token-3",
    ]
    assert loader.calls == [False, True, True]
    assert await source(False) == "token-3"  # from memory
    assert source.loads == 3
