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

    done = await syncsvc(settings, "connections", "sync", connection.id, "--now", "--full")
    assert done.code == 0, done.stderr
    report = done.json()
    assert isinstance(report, dict)
    assert report["sync"] == {"ok": 1}
    assert "  Patient: ok, 1 new" in done.stderr
    assert "  Goal: ok, " in done.stderr
    assert "new" in done.stderr.split("  Goal: ok, ", 1)[1].splitlines()[0]
