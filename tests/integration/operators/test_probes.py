"""``/healthz`` and ``/readyz``: open to load balancers, answering with check names only."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import aiohttp

from syncsvc.services import Services
from syncsvc.settings import Settings
from syncsvc.web.app import create_app
from syncsvc.web.keys import SERVICES
from tests.integration.operators.conftest import serving
from tests.integration.web.conftest import RunningService

#: Bound on waiting for the scheduler's first tick (it runs at once on start).
FIRST_TICK_POLLS = 400


async def _get(origin: str, path: str) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as client,
        client.get(f"{origin}{path}") as response,
    ):
        assert response.content_type == "application/json"
        body: dict[str, object] = await response.json()
        return response.status, body


async def test_healthz_answers_without_credentials(service: RunningService) -> None:
    status, body = await _get(service.origin, "/healthz")
    assert (status, body) == (200, {"status": "alive"})


async def test_readyz_is_ready_on_a_migrated_database(service: RunningService) -> None:
    status, body = await _get(service.origin, "/readyz")
    assert status == 200
    assert body == {
        "status": "ready",
        "checks": {"database": "ok", "migrations": "ok", "scheduler": "not_running"},
    }


async def test_readyz_is_not_ready_before_migrations(empty_db_url: str, tmp_path: Path) -> None:
    settings = Settings.for_tests(data_dir=tmp_path, database_url=empty_db_url)
    async with serving(create_app(Services(settings))) as origin:
        status, body = await _get(origin, "/readyz")
    assert status == 503
    assert body["status"] == "not_ready"
    assert body["checks"] == {
        "database": "ok",
        "migrations": "not_at_head",
        "scheduler": "not_running",
    }


async def test_readyz_is_not_ready_when_the_database_is_unreachable(tmp_path: Path) -> None:
    # Nothing listens on port 1 of the loopback: the connection is refused at once.
    unreachable = "postgresql+asyncpg://syncsvc:hunter2@127.0.0.1:1/syncsvc"
    settings = Settings.for_tests(data_dir=tmp_path, database_url=unreachable)
    async with serving(create_app(Services(settings))) as origin:
        status, body = await _get(origin, "/readyz")
        # Liveness does not depend on the database.
        alive, _ = await _get(origin, "/healthz")
    assert status == 503
    assert body["checks"] == {
        "database": "unreachable",
        "migrations": "unknown",
        "scheduler": "not_running",
    }
    assert "127.0.0.1" not in str(body)  # no DSN, no driver message
    assert alive == 200


async def test_readyz_follows_the_scheduler_tick(db_url: str, tmp_path: Path) -> None:
    # One tick on start, then none for an hour: the test moves the last tick by hand.
    settings = Settings.for_tests(data_dir=tmp_path, database_url=db_url, tick_seconds=3600.0)
    app = create_app(Services(settings, background=True))
    async with serving(app) as origin:
        scheduler = app[SERVICES].scheduler
        for _ in range(FIRST_TICK_POLLS):
            if scheduler.ticks:
                break
            await asyncio.sleep(0.025)
        assert scheduler.ticks >= 1
        status, body = await _get(origin, "/readyz")
        assert (status, body["checks"]) == (
            200,
            {"database": "ok", "migrations": "ok", "scheduler": "ok"},
        )
        scheduler.last_tick_at = dt.datetime.now(dt.UTC) - dt.timedelta(hours=7)
        status, body = await _get(origin, "/readyz")
        assert status == 503
        assert body["checks"]["scheduler"] == "stale"  # type: ignore[index]
