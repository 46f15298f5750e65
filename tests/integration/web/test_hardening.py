"""Smaller hardening findings, each attacked over real HTTP: a tenant-restricted link's session,
attacker-chosen text on the callback's error page, and control characters in ids."""

from __future__ import annotations

import aiohttp
import pytest
from sqlalchemy import select

from syncsvc.db.models.connections import ConnectLink, LaunchAttempt
from syncsvc.sandbox.patient import ScriptedPatient, parse_forms
from syncsvc.web.keys import SERVICES
from tests.fixtures.sandbox import EPIC_TENANT, GENERIC_TENANT
from tests.integration.web.flows import Flow

PROBLEM = "application/problem+json"


async def test_a_tenant_restricted_links_session_cannot_launch_elsewhere(flow: Flow) -> None:
    await flow.register(GENERIC_TENANT, name="generic")
    await flow.register(EPIC_TENANT, name="epic")
    link = await flow.link("user-r", tenant="generic")
    async with ScriptedPatient(username="nancysmart", decision="deny") as patient:
        # Use the link up (the patient declines at the EHR): the session remains.
        await patient.connect(link)
        page = await patient.open(f"{flow.service.origin}/connect")
        offered = [f.fields["tenant"] for f in parse_forms(page.body) if "tenant" in f.fields]
        form = next(f for f in parse_forms(page.body) if "tenant" in f.fields)
        # The attack: the same session's form, edited to name another tenant.
        elsewhere = await patient.submit(
            page.url, form, stop_before=flow.sandbox.origin, tenant="epic"
        )
        again = await patient.submit(
            page.url, form, stop_before=flow.sandbox.origin, tenant="generic"
        )
    assert offered == ["generic"]
    assert elsewhere.status == 400
    assert "link_tenant_mismatch" in elsewhere.body
    # The tenant the link named still works from the session.
    assert again.status == 303
    assert again.url.startswith(flow.sandbox.urls(GENERIC_TENANT).authorize)
    async with flow.service.app[SERVICES].sessionmaker() as session:
        attempts = list(await session.scalars(select(LaunchAttempt)))
        [used] = list(await session.scalars(select(ConnectLink)))
    assert used.used_at is not None
    assert len(attempts) == 2  # the declined one and the generic retry; none for epic


async def test_a_form_naming_another_provider_does_not_use_up_the_link(flow: Flow) -> None:
    await flow.register(GENERIC_TENANT, name="generic")
    await flow.register(EPIC_TENANT, name="epic")
    link = await flow.link("user-l", tenant="generic")
    async with ScriptedPatient(username="nancysmart") as patient:
        page = await patient.open(link)
        form = next(f for f in parse_forms(page.body) if "tenant" in f.fields)
        elsewhere = await patient.submit(
            page.url, form, stop_before=flow.sandbox.origin, tenant="epic"
        )
        async with flow.service.app[SERVICES].sessionmaker() as session:
            [unused] = list(await session.scalars(select(ConnectLink)))
        named = await patient.submit(
            page.url, form, stop_before=flow.sandbox.origin, tenant="generic"
        )
    assert elsewhere.status == 400
    assert "link_tenant_mismatch" in elsewhere.body
    assert unused.used_at is None
    assert named.status == 303
    assert named.url.startswith(flow.sandbox.urls(GENERIC_TENANT).authorize)


@pytest.mark.parametrize(
    ("error", "error_uri"),
    [
        ("Please call 555-0100 to verify your account", "https://evil.example/verify"),
        ("access_denied", "https://evil.example/instances/1"),
        ("server_error", "javascript:alert(1)"),
        # A Cerner-shaped URN path on a foreign host: its last segment becomes the "reason".
        (
            "invalid_request",
            "https://evil.example/errors/urn:x:Call-555-0100-now/instances/1",
        ),
    ],
)
async def test_the_callback_error_page_shows_no_attacker_text(
    flow: Flow, error: str, error_uri: str
) -> None:
    await flow.register(GENERIC_TENANT, name="generic")
    link = await flow.link(tenant="generic")
    callback = flow.service.callback_for("generic")
    async with ScriptedPatient(username="nancysmart") as patient:
        stopped = await patient.connect(link, stop_before=callback)
        state = dict(part.split("=", 1) for part in stopped.url.split("?", 1)[1].split("&"))[
            "state"
        ]
        query = {
            "state": state,
            "error": error,
            "error_description": "Reference: please call 555-0100",
            "error_uri": error_uri,
        }
        async with patient.http.get(callback, params=query, allow_redirects=False) as response:
            body = await response.text()
    assert response.status == 400
    assert "555-0100" not in body
    assert "evil.example" not in body
    assert "javascript:" not in body
    assert "Reference: <code>" in body  # a reference is shown: one syncsvc knows
    known = ("access_denied", "server_error", "invalid_request", "ehr_error")
    assert any(f"<code>{code}</code>" in body for code in known), body


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/connect-links", {"user_id": "user\u0000one"}),
        ("POST", "/api/v1/connect-links", {"user_id": "user\u0001one"}),
        ("POST", "/api/v1/connect-links", {"user_id": "u", "tenant": "gen\u0000eric"}),
        ("GET", "/api/v1/users/user%00one/connections", None),
        ("GET", "/api/v1/users/user%0Aone/resources", None),
        ("GET", "/api/v1/connections/abc%00def", None),
        ("GET", "/api/v1/connections/abc/resources?user_id=a%00b", None),
        ("GET", "/api/v1/users/u/resources?since=%00", None),
    ],
)
async def test_control_characters_in_ids_are_a_400(
    flow: Flow, api: aiohttp.ClientSession, method: str, path: str, body: object
) -> None:
    await flow.register(GENERIC_TENANT, name="generic")
    async with api.request(method, path, json=body) as response:
        problem = await response.json(content_type=None)
        assert response.status == 400, problem
        assert response.content_type == PROBLEM
    assert problem["status"] == 400
    async with flow.service.app[SERVICES].sessionmaker() as session:
        assert list(await session.scalars(select(ConnectLink))) == []
