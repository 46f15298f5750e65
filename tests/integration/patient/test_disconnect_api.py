"""``DELETE /api/v1/connections/{id}``: the host application disconnects a connection."""

from __future__ import annotations

import aiohttp

from syncsvc.sandbox.patient import ScriptedPatient
from syncsvc.sandbox.server import RunningSandbox
from tests.integration.patient.helpers import connect_and_sync, connection, counts, grant_of
from tests.integration.web.conftest import RunningService


async def test_delete_keeps_data_on_request_and_is_idempotent(
    service: RunningService,
    api: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
) -> None:
    async with ScriptedPatient(username="nancysmart") as patient:
        connected = await connect_and_sync(service, api, http, sandbox, patient)
    synced = (await counts(service, connected.id))["resources"]
    async with api.delete(f"/api/v1/connections/{connected.id}?erase=false") as response:
        assert response.status == 204
        assert await response.read() == b""
    row = await connection(service, connected.id)
    assert row.status == "revoked"
    assert row.status_reason == "disconnected_by_host_app"
    assert await counts(service, connected.id) == {
        "resources": synced,
        "credentials": 0,
        "pending": 0,
    }
    assert grant_of(sandbox).revoked
    async with api.delete(f"/api/v1/connections/{connected.id}") as again:
        assert again.status == 204
    assert (await counts(service, connected.id))["resources"] == 0


async def test_delete_errors_are_problems(
    service: RunningService,
    api: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
) -> None:
    async with ScriptedPatient(username="nancysmart") as patient:
        connected = await connect_and_sync(service, api, http, sandbox, patient)
    path = f"{service.origin}/api/v1/connections/{connected.id}"
    async with http.delete(path) as anonymous:
        assert anonymous.status == 401
        assert anonymous.content_type == "application/problem+json"
    async with http.delete(path, headers={"Authorization": "Bearer wrong"}) as wrong:
        assert wrong.status == 401
    async with api.delete("/api/v1/connections/no-such-id") as unknown:
        assert unknown.status == 404
        assert (await unknown.json())["reason"] == "not_found"
    async with api.delete(f"/api/v1/connections/{connected.id}?erase=maybe") as bad:
        assert bad.status == 400
        assert (await bad.json())["reason"] == "invalid_erase"
    row = await connection(service, connected.id)
    assert row.status == "active"
    assert (await counts(service, connected.id))["credentials"] == 1
