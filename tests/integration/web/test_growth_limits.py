"""Unbounded growth: one session or one API key cannot create launch rows or links without end."""

from __future__ import annotations

import aiohttp
import pytest
from sqlalchemy import func, select

from syncsvc.db.models.connections import ConnectLink, LaunchAttempt
from syncsvc.sandbox.patient import ScriptedPatient, parse_forms
from syncsvc.settings import Secret, Settings
from syncsvc.web.keys import SERVICES
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.web.flows import Flow


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Small limits, so a test reaches them in a few requests."""
    return settings.replace(
        connect_start_burst=3,
        connect_starts_per_hour=1,
        link_burst=3,
        links_per_minute=1,
        api_keys=(Secret("test-api-key"), Secret("other-app-key")),
    )


async def _count(flow: Flow, model: type[LaunchAttempt] | type[ConnectLink]) -> int:
    async with flow.service.app[SERVICES].sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_a_session_cannot_start_launches_without_limit(flow: Flow) -> None:
    await flow.register(GENERIC_TENANT, name="generic")
    link = await flow.link(tenant="generic")
    authorize = flow.sandbox.urls(GENERIC_TENANT).authorize
    start = f"{flow.service.origin}/connect/start"
    async with ScriptedPatient(username="nancysmart") as attacker:
        first = await attacker.connect(link, stop_before=authorize)
        assert first.url.startswith(authorize)  # the link gave a session
        # From now on the session alone starts launches: the form of /connect, posted again.
        page = await attacker.open(f"{flow.service.origin}/connect")
        [form] = [f for f in parse_forms(page.body) if f.fields.get("tenant") == "generic"]
        answers = []
        for _ in range(6):
            async with attacker.http.post(start, data=form.fields, allow_redirects=False) as sent:
                answers.append((sent.status, sent.headers.get("Retry-After"), await sent.text()))
    statuses = [status for status, _, _ in answers]
    # The session's burst of 3 starts, then refusals (the link's own start used the link).
    assert statuses == [303, 303, 303, 429, 429, 429]
    _, retry_after, body = answers[3]
    assert retry_after is not None
    assert int(retry_after) >= 1
    assert "Too many attempts" in body
    assert await _count(flow, LaunchAttempt) == 4  # nothing written for a refused start


async def test_one_api_key_cannot_issue_links_without_limit(
    flow: Flow, service_origin: str
) -> None:
    await flow.register(GENERIC_TENANT, name="generic")
    answers = []
    for index in range(5):
        body = {"user_id": f"user-{index}", "tenant": "generic"}
        async with flow.api.post("/api/v1/connect-links", json=body) as sent:
            answers.append((sent.status, sent.headers.get("Retry-After"), await sent.json()))
    assert [status for status, _, _ in answers] == [201, 201, 201, 429, 429]
    _, retry_after, problem = answers[3]
    assert retry_after is not None
    assert int(retry_after) == problem["retry_after"] >= 1
    assert problem["reason"] == "rate_limited"
    assert problem["status"] == 429
    # Another application's key has a bucket of its own.
    async with (
        aiohttp.ClientSession(
            base_url=service_origin, headers={"Authorization": "Bearer other-app-key"}
        ) as other,
        other.post("/api/v1/connect-links", json={"user_id": "u-9"}) as sent,
    ):
        assert sent.status == 201
    assert await _count(flow, ConnectLink) == 4
