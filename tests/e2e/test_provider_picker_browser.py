"""The provider picker in a real browser with JavaScript disabled: over a directory of Oracle
Health's shape and size, the patient searches "abbev" and connects to Abbeville General
Hospital, whose FHIR base is the sandbox's Oracle-shaped tenant."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from playwright.async_api import Page

from tests.fixtures.directory import ABBEVILLE, oracle_directory, organisations
from tests.fixtures.sandbox import CERNER_TENANT
from tests.integration.cli.runner import syncsvc
from tests.integration.web.flows import Flow

pytestmark = pytest.mark.browser


async def test_a_patient_finds_and_connects_their_provider_without_javascript(
    browser_page_without_script: Page, flow: Flow, tmp_path: Path
) -> None:
    sandbox = flow.sandbox
    orgs = organisations(1_400, abbeville_base=sandbox.urls(CERNER_TENANT).fhir_base)
    bundle = tmp_path / "oracle.json"
    bundle.write_bytes(orjson.dumps(oracle_directory(orgs)))
    done = await syncsvc(
        flow.service.settings, "tenants", "import", str(bundle), "--client-id", "syncsvc-public",
        "--allow-loopback", "--directory", "oracle-health",
    )  # fmt: skip
    assert done.code == 0, done.stderr
    page = browser_page_without_script

    await page.goto(await flow.link("user-browser"))
    assert await page.get_by_role("button", name=f"Connect to {ABBEVILLE}").count() == 0
    await page.get_by_label("Find your provider by name, city, state or ZIP code").fill("abbev")
    await page.get_by_role("button", name="Search").click()
    first = page.get_by_role("button", name="Connect to").first
    assert await first.inner_text() == f"Connect to {ABBEVILLE}"
    assert "Abbeville, LA" in await page.locator("body").inner_text()
    await first.click()

    # The EHR's own login and consent page.
    await page.wait_for_url(f"{sandbox.origin}/**")
    await page.get_by_role("radio", name="Wilma Smart").check()
    await page.get_by_label("Password").fill("portal")
    await page.get_by_role("button", name="Approve").click()

    await page.wait_for_url(f"{flow.service.callback_for('abbeville-general-hospital')}?**")
    assert await page.get_by_role("heading", level=1).inner_text() == "Your record is connected"
    assert ABBEVILLE in await page.locator("body").inner_text()
