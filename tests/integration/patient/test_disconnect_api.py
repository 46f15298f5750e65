"""``DELETE /api/v1/connections/{id}``: the host application disconnects a connection."""

from __future__ import annotations

from syncsvc.sandbox.patient import ScriptedPatient
from tests.integration.patient.helpers import connect_and_sync, connection, counts, grant_of
from tests.integration.web.flows import Flow


async def test_delete_keeps_data_on_request_and_is_idempotent(flow: Flow) -> None:
    async with ScriptedPatient(username="nancysmart") as patient:
        connected = await connect_and_sync(flow, patient)
    synced = (await counts(flow.service, connected.id))["resources"]
    async with flow.api.delete(f"/api/v1/connections/{connected.id}?erase=false") as response:
        assert response.status == 204
        assert await response.read() == b""
    row = await connection(flow.service, connected.id)
    assert row.status == "revoked"
    assert row.status_reason == "disconnected_by_host_app"
    assert await counts(flow.service, connected.id) == {
        "resources": synced,
        "credentials": 0,
        "pending": 0,
    }
    assert grant_of(flow.sandbox).revoked
    async with flow.api.delete(f"/api/v1/connections/{connected.id}") as again:
        assert again.status == 204
    assert (await counts(flow.service, connected.id))["resources"] == 0


async def test_delete_errors_are_problems(flow: Flow) -> None:
    async with ScriptedPatient(username="nancysmart") as patient:
        connected = await connect_and_sync(flow, patient)
    path = f"{flow.service.origin}/api/v1/connections/{connected.id}"
    async with flow.http.delete(path) as anonymous:
        assert anonymous.status == 401
        assert anonymous.content_type == "application/problem+json"
    async with flow.http.delete(path, headers={"Authorization": "Bearer wrong"}) as wrong:
        assert wrong.status == 401
    async with flow.api.delete("/api/v1/connections/no-such-id") as unknown:
        assert unknown.status == 404
        assert (await unknown.json())["reason"] == "not_found"
    async with flow.api.delete(f"/api/v1/connections/{connected.id}?erase=maybe") as bad:
        assert bad.status == 400
        assert (await bad.json())["reason"] == "invalid_erase"
    row = await connection(flow.service, connected.id)
    assert row.status == "active"
    assert (await counts(flow.service, connected.id))["credentials"] == 1
