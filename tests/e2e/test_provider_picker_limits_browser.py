"""The type-ahead's limits seen from a real browser: past its rate the JSON search answers 429
and the live region tells the patient to wait or use the form (which still works); without the
connect link the JSON search refuses the browser."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from playwright.async_api import Page, expect

from syncsvc.settings import Settings
from tests.fixtures.directory import ABBEVILLE, oracle_directory, organisations
from tests.fixtures.sandbox import CERNER_TENANT
from tests.integration.cli.runner import syncsvc
from tests.integration.web.flows import Flow

pytestmark = pytest.mark.browser
LABEL = "Find your provider by name, city, state or ZIP code"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Three searches per link, refilled once an hour: the fourth is refused."""
    return settings.replace(picker_search_burst=3, picker_searches_per_minute=1)


async def test_past_its_rate_the_type_ahead_says_so_and_the_form_still_works(
    browser_page: Page, flow: Flow, tmp_path: Path
) -> None:
    orgs = organisations(300, abbeville_base=flow.sandbox.urls(CERNER_TENANT).fhir_base)
    bundle = tmp_path / "oracle.json"
    bundle.write_bytes(orjson.dumps(oracle_directory(orgs)))
    done = await syncsvc(
        flow.service.settings, "tenants", "import", str(bundle), "--client-id", "syncsvc-public",
        "--allow-loopback", "--directory", "oracle-health",
    )  # fmt: skip
    assert done.code == 0, done.stderr
    page = browser_page
    await page.goto(await flow.link("user-limits"))

    # Without the link the browser's own request is refused with a problem.
    refused = await page.request.get(f"{flow.service.origin}/connect/search?q=abbev")
    assert refused.status == 401
    assert refused.headers["content-type"] == "application/problem+json"
    assert (await refused.json())["reason"] == "session_missing"

    combobox = page.get_by_role("combobox", name=LABEL)
    status = page.get_by_role("status")
    await combobox.focus()
    answers = []
    for typed in ("sa", "l", "i", "n"):
        async with page.expect_response(lambda r: "/connect/search" in r.url) as searched:
            await page.keyboard.type(typed)
        answers.append((await searched.value).status)
    assert answers == [200, 200, 200, 429]
    await expect(status).to_have_text(
        "Too many searches at once. Wait a moment, then type again or press Search."
    )

    # The form searches on the server as it does without script.
    await combobox.fill("abbev")
    await page.get_by_role("button", name="Search").click()
    await page.wait_for_url("**q=abbev**")
    first = page.get_by_role("button", name="Connect to").first
    assert await first.inner_text() == f"Connect to {ABBEVILLE}"
