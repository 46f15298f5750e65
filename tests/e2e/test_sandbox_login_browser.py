"""The sandbox's login + consent page in a real headless Chromium.

A person opens the authorize URL, picks a test patient, types the password and approves or denies.
The redirect to the client (``TEST_REDIRECT_URI`` on 127.0.0.1:8000) is intercepted inside the
browser, so nothing has to listen there and the test sees exactly where the browser was sent.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from playwright.async_api import Page, Route

from syncsvc.sandbox.server import RunningSandbox
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT, TEST_REDIRECT_URI
from tests.integration.sandbox.authflow import (
    DEFAULT_SCOPE,
    authorize_params,
    exchange_code,
    new_pkce,
)

pytestmark = pytest.mark.browser

SCREENSHOT = Path("/tmp/syncsvc-sandbox-login.png")  # noqa: S108 - a file to look at, not a secret
REDIRECT_WAIT_S = 15.0


class RedirectCatcher:
    """Answers every browser request to the redirect URI's origin and remembers the first URL."""

    def __init__(self) -> None:
        self.arrived: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def handle(self, route: Route) -> None:
        """Record the callback URL and answer with a tiny page, as a client app would."""
        if not self.arrived.done():
            self.arrived.set_result(route.request.url)
        await route.fulfill(status=200, content_type="text/html", body="<p>callback reached</p>")

    async def query(self) -> dict[str, str]:
        """The callback's query parameters (fails after a bounded wait)."""
        url = await asyncio.wait_for(self.arrived, REDIRECT_WAIT_S)
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == TEST_REDIRECT_URI
        return {k: v[0] for k, v in parse_qs(parts.query).items()}


async def open_login(
    page: Page, sandbox: RunningSandbox, tenant_id: str, state: str
) -> tuple[RedirectCatcher, str]:
    """Open a PKCE authorize URL for the public client; returns the catcher and the verifier."""
    catcher = RedirectCatcher()
    redirect = urlsplit(TEST_REDIRECT_URI)
    await page.route(f"{redirect.scheme}://{redirect.netloc}/**", catcher.handle)
    pkce = new_pkce()
    params = authorize_params(sandbox, tenant_id, state=state, pkce=pkce, nonce="n-0001")
    response = await page.goto(f"{sandbox.urls(tenant_id).authorize}?{urlencode(params)}")
    assert response is not None
    assert response.status == 200
    return catcher, pkce.verifier


async def test_login_page_renders_the_request(browser_page: Page, sandbox: RunningSandbox) -> None:
    """The page names the tenant and client, lists patients and scopes, and has both buttons."""
    page = browser_page
    await open_login(page, sandbox, CERNER_TENANT, "render-state")
    await page.screenshot(path=str(SCREENSHOT), full_page=True)

    tenant = sandbox.tenant(CERNER_TENANT)
    assert await page.title() == f"Sign in - {tenant.name}"
    assert await page.get_by_role("heading", level=1).inner_text() == tenant.name
    assert "syncsvc-public" in await page.locator("body").inner_text()
    for patient in tenant.patients:
        radio = page.get_by_role("radio", name=f"{patient.given} {patient.family}")
        assert await radio.is_visible()
    for scope in DEFAULT_SCOPE.split():
        assert await page.get_by_text(scope, exact=True).is_visible()
    assert await page.get_by_role("button", name="Approve").is_visible()
    assert await page.get_by_role("button", name="Deny").is_visible()
    assert await page.get_by_label("Password").get_attribute("type") == "password"


async def test_login_and_approve_redirects_with_code_and_state(
    browser_page: Page, sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    """Choosing Wilma, typing her password and approving sends the browser back with a code."""
    page = browser_page
    catcher, verifier = await open_login(page, sandbox, CERNER_TENANT, "approve-state-42")

    await page.get_by_role("radio", name="Wilma Smart").check()
    await page.get_by_label("Password").fill("portal")
    await page.get_by_role("button", name="Approve").click()

    query = await catcher.query()
    assert query["state"] == "approve-state-42"
    assert "error" not in query
    # The code is real: it exchanges for tokens bound to the patient chosen in the browser.
    status, body = await exchange_code(
        http, sandbox, CERNER_TENANT, query["code"], verifier=verifier
    )
    assert status == 200, body
    assert body["patient"] == "12742400"


async def test_deny_redirects_with_access_denied(
    browser_page: Page, sandbox: RunningSandbox
) -> None:
    """Deny sends the browser back with error=access_denied, the same state and no code."""
    page = browser_page
    catcher, _ = await open_login(page, sandbox, EPIC_TENANT, "deny-state-7")

    await page.get_by_label("Password").fill("portal")
    await page.get_by_role("button", name="Deny").click()

    query = await catcher.query()
    assert query["error"] == "access_denied"
    assert query["state"] == "deny-state-7"
    assert "code" not in query


async def test_wrong_password_stays_on_the_page_then_succeeds(
    browser_page: Page, sandbox: RunningSandbox
) -> None:
    """A wrong password shows an error on the page, no redirect; the right one then goes through."""
    page = browser_page
    catcher, _ = await open_login(page, sandbox, CERNER_TENANT, "retry-state")

    await page.get_by_label("Password").fill("not-the-password")
    async with page.expect_response(lambda r: r.request.method == "POST") as posted:
        await page.get_by_role("button", name="Approve").click()
    response = await posted.value
    assert response.status == 401
    assert await page.get_by_role("alert").inner_text() == "Wrong login or password"
    assert not catcher.arrived.done()
    assert urlsplit(page.url).netloc == urlsplit(sandbox.origin).netloc

    # The re-rendered form still carries the authorize request: a retry completes the flow.
    await page.get_by_label("Password").fill("portal")
    await page.get_by_role("button", name="Approve").click()
    query = await catcher.query()
    assert query["state"] == "retry-state"
    assert query["code"]
