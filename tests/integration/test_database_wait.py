"""Waiting for the database: a migration that passes several revisions is one wait, said once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from syncsvc.db.migrate import upgrade
from syncsvc.db.probe import wait_for_database

#: Two early revisions of the chain, so the waiting worker sees the schema move twice.
FIRST = "8ece50df605b"
SECOND = "f57e410ce0d5"


async def test_a_migration_in_progress_is_one_wait(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'later.db'}"
    await upgrade(url, FIRST)
    heard: list[str | None] = []
    first_heard = asyncio.Event()

    def on_change(problem: str | None) -> None:
        heard.append(problem)
        first_heard.set()

    waiting = asyncio.create_task(
        wait_for_database(url, wait_seconds=60, on_change=on_change, retry_seconds=0.02)
    )
    async with asyncio.timeout(30):
        await first_heard.wait()
        await upgrade(url, SECOND)
        # Let the waiter look at the intermediate revision several times.
        await asyncio.sleep(0.3)
        await upgrade(url, "head")
        await waiting
    assert len(heard) == 2, heard
    assert heard[0] is not None
    assert f"at revision {FIRST}, not the newest" in heard[0]
    assert heard[1] is None
