"""Listing, showing and syncing connections through the host-app API, after a real connect."""

from __future__ import annotations

import aiohttp
from sqlalchemy import update

from syncsvc.db.models.connections import Connection
from syncsvc.web.keys import SERVICES
from tests.integration.host_api.conftest import NANCY, connect
from tests.integration.web.flows import sync_now
from tests.integration.web.service import RunningService

PROBLEM = "application/problem+json"


async def test_list_and_show_after_first_sync(
    service: RunningService, api: aiohttp.ClientSession, generic: str
) -> None:
    connection_id = await connect(api, "user-a", "nancysmart", generic)
    report = await sync_now(service)
    assert report.sync["ok"] == 1, report.to_json()

    async with api.get("/api/v1/users/user-a/connections") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        listed = await response.json()
    [item] = listed["connections"]
    assert item["id"] == connection_id
    assert item["user_id"] == "user-a"
    assert item["tenant"] == {"name": "generic", "display_name": "Generic SMART Sandbox"}
    assert item["patient_id"] == NANCY
    assert item["status"] == "active"
    assert item["status_reason"] is None
    assert "patient/Observation.rs" in item["scopes"]["granted"] or (
        "patient/Observation.read" in item["scopes"]["granted"]
    )
    assert item["scopes"]["offline_access"] is True
    assert {"Patient", "Observation", "Condition"} <= set(item["synced_types"])
    assert item["resource_counts"]["Patient"] == 1
    assert item["resource_counts"]["Observation"] > 0
    by_type = {t["type"]: t for t in item["types"]}
    assert by_type["Observation"]["status"] == "ok"
    assert by_type["Observation"]["resources"] == item["resource_counts"]["Observation"]
    assert item["last_sync_at"] is not None
    assert item["last_success_at"] is not None

    async with api.get(f"/api/v1/connections/{connection_id}") as response:
        assert response.status == 200
        shown = await response.json()
    assert shown == item

    async with api.get("/api/v1/users/someone-else/connections") as response:
        assert (await response.json())["connections"] == []


async def test_trimmed_scopes_are_explained(
    service: RunningService, api: aiohttp.ClientSession, generic: str
) -> None:
    connection_id = await connect(api, "user-a", "nancysmart", generic)
    async with service.app[SERVICES].sessionmaker.begin() as session:
        # As if the EHR had granted less than was asked for.
        await session.execute(
            update(Connection)
            .where(Connection.id == connection_id)
            .values(granted_scopes=["launch/patient", "patient/Patient.rs", "offline_access"])
        )
    async with api.get(f"/api/v1/connections/{connection_id}") as response:
        shown = await response.json()
    trimmed = {t["scope"]: t["explanation"] for t in shown["scopes"]["trimmed"]}
    [observation] = [scope for scope in trimmed if "Observation" in scope]
    assert "will not sync" in trimmed[observation]
    assert "Observation" not in shown["synced_types"]


async def test_unknown_or_foreign_connection_is_404_without_a_leak(
    service: RunningService, api: aiohttp.ClientSession, generic: str
) -> None:
    connection_id = await connect(api, "user-a", "nancysmart", generic)
    for method, path in [
        ("GET", "/api/v1/connections/no-such-id"),
        ("POST", "/api/v1/connections/no-such-id/sync"),
        ("GET", "/api/v1/connections/no-such-id/resources"),
        ("GET", f"/api/v1/connections/{connection_id}?user_id=user-b"),
        ("POST", f"/api/v1/connections/{connection_id}/sync?user_id=user-b"),
        ("GET", f"/api/v1/connections/{connection_id}/resources?user_id=user-b"),
    ]:
        async with api.request(method, path) as response:
            assert response.status == 404, (method, path)
            assert response.content_type == PROBLEM
            problem = await response.json()
        assert problem["reason"] == "connection_not_found"
        assert NANCY not in str(problem)
        assert connection_id not in str(problem)
    async with api.get(f"/api/v1/connections/{connection_id}?user_id=user-a") as response:
        assert response.status == 200


async def test_sync_now_makes_an_active_connection_due_and_refuses_others(
    service: RunningService, api: aiohttp.ClientSession, generic: str
) -> None:
    connection_id = await connect(api, "user-a", "nancysmart", generic)
    await sync_now(service)
    async with service.app[SERVICES].sessionmaker() as session:
        before = await session.get(Connection, connection_id)
        assert before is not None
        assert before.next_sync_at is not None
    async with api.post(f"/api/v1/connections/{connection_id}/sync") as response:
        assert response.status == 202
        accepted = await response.json()
    assert accepted["id"] == connection_id
    async with service.app[SERVICES].sessionmaker() as session:
        after = await session.get(Connection, connection_id)
        assert after is not None
        assert after.next_sync_at is not None
        assert after.next_sync_at < before.next_sync_at
    report = await sync_now(service)
    assert report.sync["ok"] == 1

    async with service.app[SERVICES].sessionmaker.begin() as session:
        await session.execute(
            update(Connection)
            .where(Connection.id == connection_id)
            .values(status="needs_reauth", status_reason="invalid_grant")
        )
    async with api.post(f"/api/v1/connections/{connection_id}/sync") as response:
        assert response.status == 409
        assert response.content_type == PROBLEM
        problem = await response.json()
    assert problem["reason"] == "connection_not_active"
    async with api.get(f"/api/v1/connections/{connection_id}") as response:
        shown = await response.json()
    assert shown["status"] == "needs_reauth"
    assert shown["status_reason"] == "invalid_grant"


async def test_every_endpoint_needs_the_api_key(service: RunningService) -> None:
    paths = [
        ("GET", "/api/v1/users/u/connections"),
        ("GET", "/api/v1/users/u/resources"),
        ("GET", "/api/v1/connections/c"),
        ("POST", "/api/v1/connections/c/sync"),
        ("GET", "/api/v1/connections/c/resources"),
    ]
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic x"}):
        async with aiohttp.ClientSession(base_url=service.origin, headers=headers) as client:
            for method, path in paths:
                async with client.request(method, path) as response:
                    assert response.status == 401, (headers, method, path)
                    assert response.content_type == PROBLEM
                    assert (await response.json())["reason"] == "api_key_required"
