"""The provider picker's type-ahead in a real browser, from the keyboard alone.

Over a directory of Oracle Health's shape and size (and a brands bundle beside it), the patient
types "abbev" into the combobox, hears how many providers were found, moves to Abbeville General
Hospital with ArrowDown, chooses it with Enter and connects through its sandbox stand-in's login
and consent. Roles, names and states are read through the accessibility tree (Playwright's role
locators and ARIA snapshots), and no script is refused by the page's policy.
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from playwright.async_api import ConsoleMessage, Page, expect

from tests.fixtures.brands import BRAND, multi_portal_brands_directory
from tests.fixtures.directory import ABBEVILLE, oracle_directory, organisations
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT
from tests.integration.cli.runner import syncsvc
from tests.integration.web.flows import Flow

pytestmark = pytest.mark.browser
LABEL = "Find your provider by name, city, state or ZIP code"


async def _import(flow: Flow, tmp_path: Path, bundle: object, directory: str) -> None:
    path = tmp_path / f"{directory}.json"
    path.write_bytes(orjson.dumps(bundle))
    done = await syncsvc(
        flow.service.settings, "tenants", "import", str(path), "--client-id", "syncsvc-public",
        "--allow-loopback", "--directory", directory,
    )  # fmt: skip
    assert done.code == 0, done.stderr


async def test_a_patient_finds_and_connects_their_provider_from_the_keyboard(
    browser_page: Page, flow: Flow, tmp_path: Path
) -> None:
    sandbox = flow.sandbox
    orgs = organisations(1_400, abbeville_base=sandbox.urls(CERNER_TENANT).fhir_base)
    await _import(flow, tmp_path, oracle_directory(orgs), "oracle-health")
    bases = {
        "main": sandbox.urls(EPIC_TENANT).fhir_base,
        "kids": sandbox.urls(GENERIC_TENANT).fhir_base,
        "clinic": "https://fhir.gulfcoast-health.org/r4",
    }
    await _import(flow, tmp_path, multi_portal_brands_directory(bases), "gulf")
    page = browser_page
    refused: list[str] = []

    def watch(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            refused.append(message.text)

    page.on("console", watch)
    await page.goto(await flow.link("user-keyboard"))

    combobox = page.get_by_role("combobox", name=LABEL)
    await expect(combobox).to_have_attribute("aria-expanded", "false")
    await expect(combobox).to_have_attribute("aria-controls", "provider-options")
    # Focus order: the search box first, then the form's Search button.
    await page.keyboard.press("Tab")
    await expect(combobox).to_be_focused()
    await page.keyboard.type("abbev", delay=40)

    listbox = page.get_by_role("listbox", name="Providers found")
    option = listbox.get_by_role("option", name=f"{ABBEVILLE} Abbeville, LA")
    await expect(option).to_be_visible()
    await expect(combobox).to_have_attribute("aria-expanded", "true")
    await expect(page.get_by_role("status")).to_have_text("1 provider found")
    await expect(listbox).to_match_aria_snapshot(
        f"""
        - listbox "Providers found":
          - option "{ABBEVILLE} Abbeville, LA"
        """
    )

    await page.keyboard.press("ArrowDown")
    await expect(option).to_have_attribute("aria-selected", "true")
    option_id = await option.get_attribute("id")
    await expect(combobox).to_have_attribute("aria-activedescendant", str(option_id))
    await page.keyboard.press("Enter")

    # The chosen provider's card; its Connect button has the focus, and Enter connects.
    connect = page.get_by_role("button", name=f"Connect to {ABBEVILLE}")
    await expect(connect).to_be_focused()
    await expect(combobox).to_have_attribute("aria-expanded", "false")
    await expect(page.get_by_role("status")).to_contain_text(f"Chosen: {ABBEVILLE}")
    await page.keyboard.press("Enter")

    await page.wait_for_url(f"{sandbox.origin}/**")
    await page.get_by_role("radio", name="Wilma Smart").check()
    await page.get_by_label("Password").fill("portal")
    await page.get_by_role("button", name="Approve").click()
    await page.wait_for_url(f"{flow.service.callback_for('abbeville-general-hospital')}?**")
    assert await page.get_by_role("heading", level=1).inner_text() == "Your record is connected"
    assert refused == []


async def test_the_type_ahead_groups_a_brand_and_keeps_its_keys_and_limits(
    browser_page: Page, flow: Flow, tmp_path: Path
) -> None:
    sandbox = flow.sandbox
    orgs = organisations(1_400, abbeville_base=sandbox.urls(CERNER_TENANT).fhir_base)
    await _import(flow, tmp_path, oracle_directory(orgs), "oracle-health")
    bases = {
        "main": sandbox.urls(EPIC_TENANT).fhir_base,
        "kids": sandbox.urls(GENERIC_TENANT).fhir_base,
        "clinic": "https://fhir.gulfcoast-health.org/r4",
    }
    await _import(flow, tmp_path, multi_portal_brands_directory(bases), "gulf")
    page = browser_page
    await page.goto(await flow.link("user-brand"))
    combobox = page.get_by_role("combobox", name=LABEL)
    await combobox.focus()

    # One letter is not searched; the live region says how many to type.
    await page.keyboard.type("g")
    await expect(page.get_by_role("status")).to_have_text(
        "Type at least 2 letters to see providers."
    )
    await expect(combobox).to_have_attribute("aria-expanded", "false")

    # The brand once, its portals beneath it as a group of options.
    await page.keyboard.type("ulf coast")
    group = page.get_by_role("group", name=BRAND)
    await expect(group.get_by_role("option")).to_have_count(3)
    await expect(page.get_by_role("status")).to_have_text("3 providers found")
    await expect(page.get_by_role("listbox", name="Providers found")).to_match_aria_snapshot(
        f"""
        - listbox "Providers found":
          - group "{BRAND}"
        """
    )
    for portal in ("Gulf Coast MyChart Gulfport", "Gulf Coast Kids Portal", "Gulf Coast Pointe"):
        await expect(group.get_by_role("option", name=re.compile(f"^{portal}"))).to_have_count(1)
    # Escape closes the list and keeps what was typed; ArrowDown opens it again.
    await page.keyboard.press("Escape")
    await expect(combobox).to_have_attribute("aria-expanded", "false")
    await expect(combobox).to_have_value("gulf coast")
    await page.keyboard.press("ArrowDown")
    await expect(combobox).to_have_attribute("aria-expanded", "true")
    await page.keyboard.press("ArrowUp")
    last = group.get_by_role("option").last
    await expect(last).to_have_attribute("aria-selected", "true")

    # More than a page: the live region says so, and the next stop after the search button is
    # the link to every result, on the server's pages.
    await combobox.fill("")
    await page.keyboard.type("salina")
    await expect(page.get_by_role("status")).to_have_text(
        "More than 20 providers found; showing the first 20"
    )
    await expect(page.get_by_role("option")).to_have_count(20)
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("button", name="Search")).to_be_focused()
    await page.keyboard.press("Tab")
    more = page.get_by_role("link", name="Show more providers")
    await expect(more).to_be_focused()
    await page.keyboard.press("Enter")
    await page.wait_for_url("**page=2**")
    await expect(page.get_by_role("heading", level=2)).to_have_text(
        "Providers matching “salina”, page 2"
    )
