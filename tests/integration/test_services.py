"""One composition root per process: the application's requests share its Services.

``serve`` builds one :class:`~syncsvc.services.Services` and every handler takes the sync
context from it: the same outbound client, vault, database and lease-owner id on every request,
never a context of its own. Closing the services closes what they opened.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from syncsvc.services import Services
from syncsvc.settings import Settings
from syncsvc.sync.context import SyncContext
from syncsvc.web.app import create_app
from syncsvc.web.keys import SERVICES
from tests.integration.operators.conftest import serving


class RecordingServices(Services):
    """Services that remember every sync context they hand to a handler."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.handed: list[SyncContext] = []

    def sync_context(self) -> SyncContext:
        context = super().sync_context()
        self.handed.append(context)
        return context


async def test_requests_share_the_one_services_of_the_application(
    db_url: str, tmp_path: Path
) -> None:
    services = RecordingServices(Settings.for_tests(data_dir=tmp_path, database_url=db_url))
    app = create_app(services)
    assert app[SERVICES] is services
    async with (
        serving(app) as origin,
        aiohttp.ClientSession(
            base_url=origin,
            headers={"Authorization": "Bearer test-api-key"},
            timeout=aiohttp.ClientTimeout(total=20),
        ) as api,
    ):
        for connection_id in ("no-such-connection", "nor-this-one"):
            async with api.delete(f"/api/v1/connections/{connection_id}") as response:
                assert response.status == 404
        http = services.http
        first, second = services.handed
        assert first is second
        assert first.http is http
        assert first.vault is services.vault
        assert first.sessionmaker is services.sessionmaker
        assert first.owner == services.owner
        assert first.metrics is services.metrics
    assert http.closed
    with pytest.raises(RuntimeError, match="not started"):
        services.sync_context()


async def test_services_open_their_resources_once_and_close_them(
    db_url: str, tmp_path: Path
) -> None:
    settings = Settings.for_tests(data_dir=tmp_path, database_url=db_url, tick_seconds=3600.0)
    services = Services(settings, background=True, decode_in_workers=False)
    async with services:
        http, hooks = services.http, services.webhook_http
        # Webhooks have a pool of their own (see syncsvc.http.create_webhook_client).
        assert http is not hooks
        assert services.sync_context() is services.sync_context()
        assert services.scheduler is not None
        # The database pool is the one sized for this process's concurrency.
        assert services.engine.pool.size() == settings.db_pool_size  # type: ignore[attr-defined]
        with pytest.raises(RuntimeError, match="started already"):
            await services.start()
    assert http.closed
    assert hooks.closed
    assert services.scheduler is None
