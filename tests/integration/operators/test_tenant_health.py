"""``/tenants/health`` and ``/tenants/{tenant}/health``: status, the deciding rule, the figures."""

from __future__ import annotations

import datetime as dt
from typing import Any

import aiohttp
import pytest

from syncsvc.sync.context import utcnow
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.operators.history import (
    TENANT,
    add_events,
    add_run,
    connected_tenant,
    set_columns,
    set_tenant,
)
from tests.integration.web.flows import Flow, set_status

HEALTH = f"/tenants/{TENANT}/health"


async def _json(client: aiohttp.ClientSession, path: str, **headers: str) -> Any:
    async with client.get(path, headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "application/json"
        assert "Accept" in response.headers["Vary"]
        return await response.json()


@pytest.mark.parametrize("path", ["/tenants/health", HEALTH, "/tenants/nobody/health", "/metrics"])
@pytest.mark.parametrize(
    "authorization", [None, "Bearer test-api-key", "Bearer wrong", "Basic dGVzdA=="]
)
async def test_operator_endpoints_need_the_operator_token(
    anonymous: aiohttp.ClientSession, path: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    async with anonymous.get(path, headers=headers) as response:
        assert response.status == 401
        assert response.content_type == "application/problem+json"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        body = await response.json()
    assert body["reason"] == "operator_token_required"
    assert "tenants" not in body


async def test_an_unknown_tenant_is_404_for_the_operator(operator: aiohttp.ClientSession) -> None:
    for accept in ("application/json", "text/html"):
        async with operator.get("/tenants/nobody/health", headers={"Accept": accept}) as response:
            assert response.status == 404
            assert response.content_type == "application/problem+json"
            assert (await response.json())["reason"] == "tenant_not_found"


async def test_no_tenants_is_ok(operator: aiohttp.ClientSession) -> None:
    body = await _json(operator, "/tenants/health")
    assert body["status"] == "ok"
    assert body["tenants"] == []
    assert body["rules"][0]["id"] == "misbound_connections"


async def test_a_freshly_synced_tenant_is_ok_with_its_figures(
    flow: Flow, operator: aiohttp.ClientSession
) -> None:
    _, connections = await connected_tenant(flow, usernames=("nancysmart", "wilmasmart"))
    body = await _json(operator, HEALTH)
    assert body["tenant"] == TENANT
    assert body["status"] == "ok"
    assert body["rule"]["id"] == "all_clear"
    assert body["rules_fired"] == []
    assert body["connections"] == {
        "total": 2,
        "active": 2,
        "no_access": 0,
        "needs_reauth": 0,
        "revoked": 0,
        "misbound": 0,
        "error": 0,
    }
    assert body["last_success"]["sync_at"] is not None
    lag = body["sync_lag_seconds"]
    assert lag["active_connections"] == 2
    assert 0 <= lag["p50"] <= lag["p95"]
    assert body["errors"]["last_hour"] == {
        "total": 0,
        "by_class": {},
        "insufficient_scope_by_type": {},
    }
    # Every requested scope of both connections, and how often the EHR granted it.
    requested = {s for c in connections for s in c.requested_scopes}
    scopes = {row["scope"]: row for row in body["scopes"]}
    assert set(scopes) == requested
    assert scopes["launch/patient"]["requested"] == 2
    observation = next(s for s in scopes if s.startswith("patient/Observation."))
    assert scopes[observation] == {"scope": observation, "requested": 2, "granted": 2}
    assert body["discovery"]["has_document"] is True
    assert body["discovery"]["last_error"] is None
    assert body["discovery"]["age_seconds"] >= 0
    horizon = body["refresh_horizon"]
    assert horizon["earliest"] is not None
    assert horizon["earliest"] <= horizon["latest"]
    buckets = body["sync_outcomes"]["buckets"]
    assert len(buckets) == 24
    assert buckets[-1]["ok"] == 2
    assert sum(b["transient"] for b in buckets) == 0

    overview = await _json(operator, "/tenants/health")
    assert overview["status"] == "ok"
    [summary] = overview["tenants"]
    assert summary["tenant"] == TENANT
    assert summary["status"] == "ok"
    assert summary["connections"]["active"] == 2
    assert summary["href"] == HEALTH


async def test_recent_errors_degrade_and_a_misbound_connection_fails(
    flow: Flow, operator: aiohttp.ClientSession
) -> None:
    service = flow.service
    tenant, [connection] = await connected_tenant(flow)
    now = utcnow()
    await add_events(
        service,
        tenant,
        now - dt.timedelta(minutes=10),
        {"error_class": "throttled", "count": 2},
        {"error_class": "upstream_5xx", "connection_id": connection.id},
    )
    await add_events(
        service,
        tenant,
        now - dt.timedelta(hours=3),
        {"error_class": "insufficient_scope", "resource_type": "Condition", "outcome": "denied"},
        {"error_class": "timeout"},
    )
    # Outside every window: two days ago.
    await add_events(
        service, tenant, now - dt.timedelta(days=2), {"error_class": "compartment_violation"}
    )
    await add_run(service, connection.id, now - dt.timedelta(hours=3), "transient")

    body = await _json(operator, HEALTH)
    assert body["status"] == "degraded"
    assert body["rule"]["id"] == "transient_errors"
    assert "throttled x2" in body["rule"]["reason"]
    assert [r["id"] for r in body["rules_fired"]] == ["transient_errors", "insufficient_scope"]
    assert body["errors"]["last_hour"] == {
        "total": 3,
        "by_class": {"throttled": 2, "upstream_5xx": 1},
        "insufficient_scope_by_type": {},
    }
    assert body["errors"]["last_day"] == {
        "total": 5,
        "by_class": {"insufficient_scope": 1, "throttled": 2, "timeout": 1, "upstream_5xx": 1},
        "insufficient_scope_by_type": {"Condition": 1},
    }
    buckets = body["sync_outcomes"]["buckets"]
    assert sum(b["transient"] for b in buckets) == 1
    assert buckets[-4]["transient"] == 1 or buckets[-5]["transient"] == 1  # 3 h ago

    await set_status(service, connection.id, "misbound")
    body = await _json(operator, HEALTH)
    assert body["status"] == "failing"
    assert body["rule"]["id"] == "misbound_connections"
    assert body["connections"]["misbound"] == 1
    overview = await _json(operator, "/tenants/health")
    assert overview["status"] == "failing"
    assert overview["tenants"][0]["rule"]["id"] == "misbound_connections"


async def test_reauth_share_and_stale_syncs(flow: Flow, operator: aiohttp.ClientSession) -> None:
    service = flow.service
    _, connections = await connected_tenant(
        flow, usernames=("nancysmart", "wilmasmart", "timmysmart")
    )
    await set_status(service, connections[0].id, "needs_reauth")
    body = await _json(operator, HEALTH)
    assert (body["status"], body["rule"]["id"]) == ("degraded", "reauth_wave")
    assert "1 of 3" in body["rule"]["reason"]

    await set_status(service, connections[1].id, "needs_reauth")
    body = await _json(operator, HEALTH)
    assert (body["status"], body["rule"]["id"]) == ("failing", "reauth_majority")

    # Revoked connections are the patient's choice, not a health signal.
    await set_status(service, connections[0].id, "revoked")
    await set_status(service, connections[1].id, "revoked")
    body = await _json(operator, HEALTH)
    assert body["status"] == "ok"

    # The last active connection has not synced for two days.
    long_ago = utcnow() - dt.timedelta(days=3)
    for connection in connections:
        await set_columns(
            service,
            connection.id,
            connected_at=long_ago,
            created_at=long_ago,
            last_success_at=long_ago + dt.timedelta(days=1),
        )
    body = await _json(operator, HEALTH)
    assert (body["status"], body["rule"]["id"]) == ("failing", "no_recent_sync")
    assert [r["id"] for r in body["rules_fired"]] == ["no_recent_sync", "sync_lag"]
    assert body["sync_lag_seconds"]["p95"] > 47 * 3600


async def test_discovery_failures(flow: Flow, operator: aiohttp.ClientSession) -> None:
    service = flow.service
    tenant = await flow.register(GENERIC_TENANT, name=TENANT)
    await set_tenant(service, tenant, discovery_error="The server answered 503.")
    body = await _json(operator, HEALTH)
    assert (body["status"], body["rule"]["id"]) == ("degraded", "discovery_stale")
    assert body["discovery"]["last_error"] == "The server answered 503."
    assert body["discovery"]["has_document"] is True

    await set_tenant(service, tenant, endpoints={}, discovery_fetched_at=None)
    body = await _json(operator, HEALTH)
    assert (body["status"], body["rule"]["id"]) == ("failing", "discovery_failing")
    assert body["discovery"]["age_seconds"] is None


async def test_html_for_a_person_json_for_a_program(
    flow: Flow, operator: aiohttp.ClientSession
) -> None:
    service = flow.service
    tenant, [connection] = await connected_tenant(flow)
    await add_events(
        service,
        tenant,
        utcnow() - dt.timedelta(minutes=5),
        {"error_class": "insufficient_scope", "resource_type": "Condition", "outcome": "denied"},
    )
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    async with operator.get(HEALTH, headers={"Accept": browser}) as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert "script-src" not in response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        page = await response.text()
    assert "<script" not in page
    assert "<svg" in page
    assert 'class="bar-ok"' in page
    assert "insufficient_scope" in page
    assert "Condition" in page
    assert "degraded" in page
    assert connection.patient_id not in page

    async with operator.get("/tenants/health", headers={"Accept": browser}) as response:
        assert response.content_type == "text/html"
        overview = await response.text()
    assert f'href="/tenants/{TENANT}/health"' in overview
    assert "<script" not in overview

    # JSON is the default, and wins when the client prefers it.
    for accept in ("", "*/*", "application/json", "application/json, text/html;q=0.5"):
        body = await _json(operator, HEALTH, Accept=accept)
        assert body["status"] == "degraded"
