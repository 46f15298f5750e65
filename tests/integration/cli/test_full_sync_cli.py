"""``connections sync ID --now --full``: a manual full sync that shows each type as it finishes."""

from __future__ import annotations

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.sandbox.server import RunningSandbox
from syncsvc.settings import Settings
from syncsvc.vault import Vault
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.cli.runner import syncsvc
from tests.integration.connected import connect_patient, register_sandbox_tenant


async def test_full_sync_shows_progress_per_type(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
) -> None:
    tenant = await register_sandbox_tenant(
        sessionmaker, vault, http, sandbox, GENERIC_TENANT, resource_types=("Patient", "Goal")
    )
    connection = await connect_patient(
        sessionmaker, vault, http, sandbox, tenant, sandbox_tenant=GENERIC_TENANT
    )
    misused = await syncsvc(settings, "connections", "sync", connection.id, "--full")
    assert misused.code == 2
    assert "--full needs --now" in misused.stderr

    def goal_searches(since: int) -> list[str]:
        log = list(sandbox.state.request_log)[since:]
        return [e.url for e in log if "/Goal?" in e.url]

    first = await syncsvc(settings, "connections", "sync", connection.id, "--now")
    assert first.code == 0, first.stderr
    seen = len(sandbox.state.request_log)
    incremental = await syncsvc(settings, "connections", "sync", connection.id, "--now")
    assert incremental.code == 0, incremental.stderr
    assert all("_lastUpdated" in url for url in goal_searches(seen))  # after a first pull

    seen = len(sandbox.state.request_log)
    done = await syncsvc(settings, "connections", "sync", connection.id, "--now", "--full")
    assert done.code == 0, done.stderr
    full = goal_searches(seen)
    assert full
    assert not any("_lastUpdated" in url for url in full)  # --full really pulls in full
    report = done.json()
    assert isinstance(report, dict)
    assert report["sync"] == {"ok": 1}
    assert "  Patient: ok, " in done.stderr
    assert "  Goal: ok, " in done.stderr
