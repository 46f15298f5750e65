"""The resource change feed: pages, incremental cursors, deletions, formats, and isolation."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from sqlalchemy import select, update

from syncsvc.db.models.records import Resource, SyncState
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.web.keys import SERVICES
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.host_api.conftest import (
    NANCY,
    WILMA,
    connect,
    deleted_reason,
    read_all,
    read_page,
)
from tests.integration.web.flows import sync_now
from tests.integration.web.service import RunningService

#: The sandbox admin API takes changes as JSON only (no page can send that cross-origin).
JSON = {"Content-Type": "application/json"}

PROBLEM = "application/problem+json"


async def _live(service: RunningService, connection_id: str) -> set[tuple[str, str]]:
    async with service.app[SERVICES].sessionmaker() as session:
        rows = await session.execute(
            select(Resource.resource_type, Resource.resource_id).where(
                Resource.connection_id == connection_id, Resource.deleted_at.is_(None)
            )
        )
        return {(str(t), str(i)) for t, i in rows}


def _keys(resources: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["resourceType"], r["id"]) for r in resources]


async def _admin(
    http: aiohttp.ClientSession, sandbox: RunningSandbox, method: str, path: str, body: Any = None
) -> Any:
    url = f"{sandbox.origin}/admin/tenants/{GENERIC_TENANT}/patients/{NANCY}/{path}"
    data = orjson.dumps(body) if body is not None else None
    async with http.request(method, url, data=data, headers=JSON) as response:
        raw = await response.read()
        assert response.status < 300, raw
        return orjson.loads(raw) if raw else None


async def test_paged_read_then_only_what_changed_or_was_deleted(
    service: RunningService,
    api: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    generic: str,
) -> None:
    connection_id = await connect(api, "user-a", "nancysmart", generic)
    await sync_now(service)
    path = f"/api/v1/connections/{connection_id}/resources"
    live = await _live(service, connection_id)
    assert len(live) > 7

    first = await read_page(api, path, limit=3)
    assert first.has_more
    assert first.content_type == "application/fhir+json"
    bundle = first.bundle()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "searchset"
    assert len(bundle["entry"]) == 3
    [next_link] = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
    assert first.link == f'<{next_link}>; rel="next"'
    assert bundle["meta"]["extension"][0]["valueString"] == first.cursor
    entry = bundle["entry"][0]
    resource = entry["resource"]
    assert entry["fullUrl"] == (
        f"{sandbox.urls(GENERIC_TENANT).fhir_base}/{resource['resourceType']}/{resource['id']}"
    )
    assert entry["search"] == {"mode": "match"}
    assert entry["extension"][0]["valueString"] == connection_id
    async with api.get(next_link) as response:
        assert response.status == 200
        second = orjson.loads(await response.read())
    assert second["entry"][0]["resource"]["id"] != resource["id"]

    everything, cursor, pages = await read_all(api, path, limit=3)
    keys = _keys(everything)
    assert len(keys) == len(set(keys)) == len(live)
    assert set(keys) == live
    assert pages == -(-len(live) // 3) + (len(live) % 3 == 0)
    # The stored bytes come out exactly as synced.
    async with service.app[SERVICES].sessionmaker() as session:
        stored = await session.get(Resource, (connection_id, *keys[0]))
        assert stored is not None
        assert orjson.loads(stored.body) == everything[0]

    nothing = await read_page(api, path, since=cursor)
    assert nothing.resources() == []
    assert not nothing.has_more
    assert nothing.link is None

    # Change the record at the EHR: one new, one changed, one deleted, one entered in error.
    observations = sorted(i for t, i in live if t == "Observation")
    added = await _admin(
        http,
        sandbox,
        "POST",
        "Observation",
        {"resourceType": "Observation", "status": "final", "code": {"text": "Added"}},
    )
    await _admin(http, sandbox, "PATCH", f"Observation/{observations[0]}", {"status": "amended"})
    await _admin(http, sandbox, "DELETE", f"Observation/{observations[1]}")
    await _admin(http, sandbox, "POST", f"Observation/{observations[2]}/entered-in-error")
    async with service.app[SERVICES].sessionmaker.begin() as session:
        # Deletions show only in a full reconciliation: make the next one due.
        await session.execute(
            update(SyncState)
            .where(SyncState.connection_id == connection_id)
            .values(last_full_at=None)
        )
    async with api.post(f"/api/v1/connections/{connection_id}/sync") as response:
        assert response.status == 202
    await sync_now(service)

    changes, cursor_after, _ = await read_all(api, path, since=cursor)
    by_id = {r["id"]: r for r in changes}
    assert set(by_id) == {added["id"], *observations[:3]}
    assert deleted_reason(by_id[added["id"]]) is None
    assert by_id[observations[0]]["status"] == "amended"
    assert deleted_reason(by_id[observations[1]]) == "vanished"
    assert deleted_reason(by_id[observations[2]]) == "entered-in-error"
    tombstone = by_id[observations[1]]
    assert set(tombstone) == {"resourceType", "id", "meta"}
    assert tombstone["meta"]["lastUpdated"]

    # The same changes as NDJSON, chosen by parameter or by Accept.
    as_ndjson = await read_page(api, path, since=cursor, format="ndjson")
    assert as_ndjson.content_type == "application/x-ndjson"
    assert _keys(as_ndjson.resources()) == _keys(changes)
    async with api.get(
        path, params={"since": cursor}, headers={"Accept": "application/x-ndjson"}
    ) as response:
        assert response.content_type == "application/x-ndjson"
        assert len((await response.read()).splitlines()) == len(changes)
    assert (await read_page(api, path, since=cursor_after)).resources() == []


async def test_type_filter_is_bound_to_the_cursor(
    service: RunningService, api: aiohttp.ClientSession, generic: str
) -> None:
    connection_id = await connect(api, "user-a", "nancysmart", generic)
    await sync_now(service)
    path = f"/api/v1/connections/{connection_id}/resources"
    live = await _live(service, connection_id)
    only, cursor, _ = await read_all(api, path, type="Condition,Patient", limit=2)
    assert set(_keys(only)) == {k for k in live if k[0] in ("Condition", "Patient")}
    async with api.get(f"{path}?type=Patient&type=Condition") as response:
        repeated = orjson.loads(await response.read())
    assert {e["resource"]["resourceType"] for e in repeated["entry"]} == {"Patient", "Condition"}
    # Left out, the cursor's own filter applies; a different one is refused.
    assert (await read_page(api, path, since=cursor)).resources() == []
    assert (await read_page(api, path, since=cursor, type="Patient,Condition")).resources() == []
    async with api.get(path, params={"since": cursor, "type": "Observation"}) as response:
        assert response.status == 400
        assert (await response.json())["reason"] == "cursor_mismatch"


async def test_user_feed_spans_only_that_users_connections(
    service: RunningService, api: aiohttp.ClientSession, generic: str
) -> None:
    a = await connect(api, "user-a", "nancysmart", generic)
    b = await connect(api, "user-b", "wilmasmart", generic)
    # user-b also has Nancy's record: the same resources at the EHR, a different connection.
    b_nancy = await connect(api, "user-b", "nancysmart", generic)
    await sync_now(service)
    everything_a, cursor_a, _ = await read_all(api, "/api/v1/users/user-a/resources", limit=7)
    assert set(_keys(everything_a)) == await _live(service, a)
    async with api.get("/api/v1/users/user-a/resources", params={"limit": 1000}) as response:
        bundle = orjson.loads(await response.read())
    assert {e["extension"][0]["valueString"] for e in bundle["entry"]} == {a}
    patient_ids = {e["resource"]["id"] for e in bundle["entry"] if "Patient" in e["fullUrl"]}
    assert patient_ids == {NANCY}

    everything_b, cursor_b, _ = await read_all(api, "/api/v1/users/user-b/resources", limit=7)
    expected_b = await _live(service, b) | await _live(service, b_nancy)
    assert set(_keys(everything_b)) == expected_b
    assert len(everything_b) == len(await _live(service, b)) + len(await _live(service, b_nancy))
    assert ("Patient", WILMA) in set(_keys(everything_b))

    # A cursor of one feed opens no other: not another user's, not a connection's.
    for path, cursor in [
        ("/api/v1/users/user-a/resources", cursor_b),
        ("/api/v1/users/user-b/resources", cursor_a),
        (f"/api/v1/connections/{a}/resources", cursor_a),
        (f"/api/v1/connections/{b}/resources", cursor_b),
        (f"/api/v1/connections/{a}/resources", cursor_b),
    ]:
        async with api.get(path, params={"since": cursor}) as response:
            assert response.status == 400, path
            assert response.content_type == PROBLEM
            problem = await response.json()
        assert problem["reason"] == "invalid_cursor"
        assert WILMA not in str(problem)
        assert NANCY not in str(problem)
    connection_cursor = (await read_page(api, f"/api/v1/connections/{b}/resources")).cursor
    for path in ("/api/v1/users/user-b/resources", f"/api/v1/connections/{a}/resources"):
        async with api.get(path, params={"since": connection_cursor}) as response:
            assert response.status == 400


async def test_malformed_parameters_are_400_problems_and_not_logged_as_errors(
    service: RunningService, api: aiohttp.ClientSession, generic: str
) -> None:
    from structlog.testing import capture_logs  # noqa: PLC0415 - only this test captures

    connection_id = await connect(api, "user-a", "nancysmart", generic)
    path = f"/api/v1/connections/{connection_id}/resources"
    good = (await read_page(api, path)).cursor
    head, _, tail = good.rpartition(".")
    tampered = f"{head}.{'A' if tail[0] != 'A' else 'B'}{tail[1:]}"
    cases = [
        ({"limit": "0"}, "invalid_limit"),
        ({"limit": "1001"}, "invalid_limit"),
        ({"limit": "ten"}, "invalid_limit"),
        ({"limit": "-1"}, "invalid_limit"),
        ({"type": "observation"}, "invalid_type"),
        ({"type": "Observation,"}, "invalid_type"),
        ({"type": "Obs'ervation"}, "invalid_type"),
        ({"format": "xml"}, "invalid_format"),
        ({"since": "garbage"}, "invalid_cursor"),
        ({"since": tampered}, "invalid_cursor"),
        ({"since": good + "x"}, "invalid_cursor"),
        ({"since": "x" * 5000}, "invalid_cursor"),
    ]
    with capture_logs() as logs:
        for params, reason in cases:
            for feed in (path, "/api/v1/users/user-a/resources"):
                async with api.get(feed, params=params) as response:
                    assert response.status == 400, (feed, params)
                    assert response.content_type == PROBLEM
                    problem = await response.json()
                assert problem["reason"] == reason, (feed, params)
    assert not [entry for entry in logs if entry["log_level"] in ("error", "critical")]


async def test_a_large_page_streams_whole(
    service: RunningService, api: aiohttp.ClientSession, generic: str
) -> None:
    connection_id = await connect(api, "user-a", "nancysmart", generic)
    await sync_now(service)
    live = await _live(service, connection_id)
    path = f"/api/v1/connections/{connection_id}/resources"
    for fmt in ("bundle", "ndjson"):
        page = await read_page(api, path, limit=1000, format=fmt)
        assert not page.has_more
        assert set(_keys(page.resources())) == live
