"""A person's path in a real browser: link, provider, EHR login, success, status, disconnect."""

from __future__ import annotations

import pytest
from playwright.async_api import Page
from sqlalchemy import select

from syncsvc.db.models.connections import Connection
from syncsvc.db.stats_repo import count_resources
from syncsvc.web.keys import SERVICES
from tests.fixtures.sandbox import CERNER_TENANT
from tests.integration.web.flows import Flow, sync_now

pytestmark = pytest.mark.browser


async def test_patient_connects_sees_the_sync_and_disconnects(
    browser_page: Page, flow: Flow
) -> None:
    service, sandbox = flow.service, flow.sandbox
    await flow.register(CERNER_TENANT, name="cerner")
    link = await flow.link("user-browser", tenant="cerner")
    page = browser_page

    await page.goto(link)
    assert await page.get_by_role("heading", level=1).inner_text() == "Connect your health record"
    await page.get_by_role("button", name="Connect to Oracle Health Sandbox").click()

    # The EHR's own login and consent page.
    await page.wait_for_url(f"{sandbox.origin}/**")
    await page.get_by_role("radio", name="Wilma Smart").check()
    await page.get_by_label("Password").fill("portal")
    await page.get_by_role("button", name="Approve").click()

    await page.wait_for_url(f"{service.callback_for('cerner')}?**")
    assert await page.get_by_role("heading", level=1).inner_text() == "Your record is connected"
    body = await page.locator("body").inner_text()
    assert "Wilma Smart" in body
    assert "Observations" in body or "Observation" in body
    connection = await flow.only_connection()
    assert connection.patient_id == "12742400"
    assert connection.user_id == "user-browser"
    assert connection.status == "active"

    # The first background sync, then the patient's status page in the same browser session.
    report = await sync_now(service)
    assert report.sync == {"ok": 1}
    await page.goto(f"{service.origin}/status")
    assert await page.get_by_role("heading", level=1).inner_text() == "Your connected records"
    status = await page.locator("body").inner_text()
    assert "What is synced" in status
    assert "(Observation): " in status
    assert "Last synced: not yet" not in status

    await page.get_by_role("link", name="Disconnect").click()
    assert (await page.get_by_role("heading", level=1).inner_text()).startswith("Disconnect")
    await page.get_by_role("button", name="Disconnect").click()
    assert (await page.get_by_role("heading", level=1).inner_text()).endswith("is disconnected")
    async with service.app[SERVICES].sessionmaker() as session:
        [after] = list(await session.scalars(select(Connection)))
        assert await count_resources(session, after.id) == {}
    assert after.status == "revoked"
    # The EHR was told: the grant's refresh token no longer works there.
    assert any(e.url.endswith("/revoke") for e in sandbox.state.request_log)
