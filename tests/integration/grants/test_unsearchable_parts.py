"""Parts of a type the vendor cannot search are ``unsearchable`` on every surface, never "not yet".

A patient shares Observation only for a category the tenant's vendor plan cannot search. The
patient connects through the real pages, the real runner pulls, and the status page,
``connections show`` (JSON and text), the host API, tenant health (JSON and page), the metrics
and the webhooks all say that the provider's system cannot search that part, naming it, while
the run is ``ok`` and Observation is never searched. Once the plan can search it, or the grant
gives a part it can, the state goes and the type is pulled.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
from sqlalchemy import select

from syncsvc.db.models.connections import Tenant
from syncsvc.sandbox.patient import ScriptedPatient
from syncsvc.web.keys import SERVICES
from tests.fixtures.sandbox import EPIC_TENANT, GENERIC_TENANT
from tests.integration.grants.surfaces import Clock, Surfaces, read_surfaces, sync, text
from tests.integration.web.flows import Flow

OBS = "http://terminology.hl7.org/CodeSystem/observation-category"
LAB = f"{OBS}|laboratory"
VITALS = f"{OBS}|vital-signs"
SOCIAL = f"{OBS}|social-history"
#: Past the sync interval (six hours): the next tick syncs, and refreshes the expired token first.
SYNC_DUE = 7 * 3600
#: Epic's plan as a tenant might narrow it: its Observation searches take no social history.
LABS_AND_VITALS_ONLY = {
    "Observation": {"variants": [{"category": "laboratory"}, {"category": "vital-signs"}]}
}
LINE = (
    "Lab results and vital signs (Observation), social history only: your provider's system "
    "cannot search for social history, so it is not synced."
)
CANNOT = (
    "Your provider shared only the social history in your lab results and vital signs "
    "(Observation), and your provider's system cannot search for social history, so none of it "
    "is synced. Nothing failed: it is synced once that system can search it, or once you share "
    "more of it."
)


def _observation_searches(flow: Flow, since: int = 0) -> list[dict[str, list[str]]]:
    """The query of every Observation search the sandbox answered, from log index ``since``."""
    searches = []
    for entry in list(flow.sandbox.state.request_log)[since:]:
        parts = urlsplit(entry.url)
        if parts.path.endswith("/Observation") and "pageContext" not in parts.query:
            searches.append(parse_qs(parts.query))
    return searches


def _refused(flow: Flow) -> list[str]:
    return [e.url for e in flow.sandbox.state.request_log if e.status in (400, 403)]


async def _set_plans(flow: Flow, name: str, overrides: dict[str, Any] | None) -> None:
    """The operator's plan overrides of tenant ``name`` (as ``tenants add --plans`` stores them)."""
    async with flow.service.app[SERVICES].sessionmaker.begin() as session:
        tenant = await session.scalar(select(Tenant).where(Tenant.name == name))
        assert tenant is not None
        tenant.plan_overrides = overrides


def _type(seen: Surfaces, name: str) -> dict[str, Any]:
    return next(t for t in seen.api["types"] if t["type"] == name)


def _nothing_unsearchable(seen: Surfaces) -> None:
    seen.assert_agree()
    assert seen.explanation["unsearchable_parts"] == {}
    assert all(t["status"] != "unsearchable" for t in seen.api["types"])
    assert all(t["unsearchable"] == [] for t in seen.cli["types"])
    assert seen.health["grants"]["type_states"]["unsearchable"] == {}
    assert seen.health["grants"]["unsearchable_parts"] == {}
    assert "unsearchable" not in text(seen.health_page)
    assert "cannot search" not in text(seen.status_page)


async def test_a_type_shared_only_in_parts_the_vendor_cannot_search_is_unsearchable_everywhere(
    flow: Flow, operator: aiohttp.ClientSession
) -> None:
    flow.sandbox.tenant(EPIC_TENANT).policy.granted_categories = {"Observation": [SOCIAL]}
    # Confidential: Epic gives public clients no offline access (a degraded tenant of its own).
    await flow.register(EPIC_TENANT, name="epic", auth="client_secret_basic")
    await _set_plans(flow, "epic", LABS_AND_VITALS_ONLY)
    async with ScriptedPatient(username="nancysmart") as patient:
        page = await patient.connect(await flow.link("user-1", tenant="epic"))
        assert page.status == 200, page.body
        connection = await flow.only_connection()
        assert f"patient/Observation.rs?category={SOCIAL}" in connection.granted_scopes
        logged = len(flow.sandbox.state.request_log)
        assert (await sync(flow)).sync == {"ok": 1}
        seen = await read_surfaces(flow, patient, operator, connection.id)
        searched_before = _observation_searches(flow, logged)

        # The operator lets the plan search social history: the state goes, the type is pulled.
        await _set_plans(flow, "epic", None)
        async with flow.api.post(f"/api/v1/connections/{connection.id}/sync") as response:
            assert response.status == 202, await response.text()
        logged = len(flow.sandbox.state.request_log)
        assert (await sync(flow)).sync == {"ok": 1}
        after = await read_surfaces(flow, patient, operator, connection.id)
        searched_after = _observation_searches(flow, logged)

    # Never asked for, nothing refused, the run ok: not a failure.
    assert searched_before == []
    assert _refused(flow) == []
    seen.assert_agree()
    qualifier = f"category={SOCIAL}"
    observation = _type(seen, "Observation")
    assert observation["status"] == "unsearchable"
    assert observation["granted"] is True
    assert observation["parts"] == [qualifier]
    assert observation["unsearchable"] == [qualifier]
    assert observation["sentence"] == LINE
    # The CLI, JSON and text, in the same words.
    cli_line = next(t for t in seen.cli["types"] if t["type"] == "Observation")
    assert (cli_line["state"], cli_line["sentence"]) == ("unsearchable", LINE)
    assert cli_line["unsearchable"] == [qualifier]
    assert seen.cli["sync_states"]["Observation"]["status"] == "unsearchable"
    assert LINE in text(seen.cli_text)
    assert CANNOT in text(seen.cli_text)
    # The explanation the API, the CLI and the webhooks carry names the part.
    assert seen.explanation["unsearchable_parts"] == {"Observation": [qualifier]}
    assert CANNOT in seen.explanation["sentences"]
    assert not any("shared only part" in s for s in seen.explanation["sentences"])
    # The patient's page says it plainly, and never "not synced yet" nor a failure.
    page = text(seen.status_page)
    assert LINE in page
    assert CANNOT in page
    for shown in (page, text(seen.cli_text), observation["sentence"]):
        assert "not synced yet" not in shown
    # The operator: health ok, the state counted and the part named.
    assert seen.health["status"] == "ok"
    assert seen.health["grants"]["type_states"]["unsearchable"] == {"Observation": 1}
    assert seen.health["grants"]["unsearchable_parts"] == {"Observation": {qualifier: 1}}
    health_page = text(seen.health_page)
    assert "Observation unsearchable: granted only in parts this tenant's vendor plan" in (
        health_page
    )
    assert qualifier in health_page
    assert "not synced, not a failure" in health_page
    assert not seen.health["type_failures"]
    assert (
        seen.metric(
            "syncsvc_resource_type_states",
            tenant="epic",
            state="unsearchable",
            resource_type="Observation",
        )
        == 1
    )
    assert seen.metric("syncsvc_type_failures", tenant="epic", resource_type="Observation") in (
        None,
        0,
    )
    [completed] = [h for h in seen.webhooks if h["type"] == "sync.completed"]
    assert completed["data"]["outcome"] == "ok"
    assert completed["data"]["explanation"]["unsearchable_parts"] == {"Observation": [qualifier]}
    assert CANNOT in completed["data"]["explanation"]["sentences"]
    assert "Observation" not in completed["data"]["types"]

    # Searchable now: pulled in full within the grant, and said nowhere any more.
    assert searched_after
    assert all(q.get("category") == [SOCIAL] for q in searched_after)
    assert all("_lastUpdated" not in q for q in searched_after)
    _nothing_unsearchable(after)
    pulled = _type(after, "Observation")
    assert pulled["status"] == "ok"
    assert pulled["unsearchable"] == []
    assert (
        after.metric(
            "syncsvc_resource_type_states",
            tenant="epic",
            state="unsearchable",
            resource_type="Observation",
        )
        is None
    )
    assert after.webhooks[-1]["data"]["types"]["Observation"]["status"] == "ok"


async def test_a_grant_widened_to_a_searchable_part_ends_the_state_and_names_the_rest(
    flow: Flow, operator: aiohttp.ClientSession
) -> None:
    policy = flow.sandbox.tenant(GENERIC_TENANT).policy
    policy.granted_categories = {"Observation": [VITALS]}
    policy.widen_on_refresh = True
    await flow.register(GENERIC_TENANT, name="generic")
    await _set_plans(flow, "generic", {"Observation": {"variants": [{"category": "laboratory"}]}})
    clock = Clock(flow)
    async with ScriptedPatient(username="nancysmart") as patient:
        page = await patient.connect(await flow.link("user-1", tenant="generic"))
        assert page.status == 200, page.body
        connection = await flow.only_connection()
        assert (await sync(flow, clock.now)).sync == {"ok": 1}
        seen = await read_surfaces(flow, patient, operator, connection.id)
        # The patient shares lab results too: the refresh before the next sync widens the grant.
        policy.granted_categories = {"Observation": [LAB, VITALS]}
        clock.advance(SYNC_DUE)
        logged = len(flow.sandbox.state.request_log)
        report = await sync(flow, clock.now)
        assert report.refresh == {"refreshed": 1}
        assert report.sync == {"ok": 1}
        after = await read_surfaces(flow, patient, operator, connection.id)

    seen.assert_agree()
    assert _type(seen, "Observation")["status"] == "unsearchable"
    assert seen.explanation["unsearchable_parts"] == {"Observation": [f"category={VITALS}"]}

    # Lab results are searched (in full), vital signs still not: the plan cannot.
    searches = _observation_searches(flow, logged)
    assert searches
    assert all(q.get("category") == [LAB] for q in searches)
    assert all("_lastUpdated" not in q for q in searches)
    assert _refused(flow) == []
    after.assert_agree()
    observation = _type(after, "Observation")
    assert observation["status"] == "ok"
    assert observation["unsearchable"] == [f"category={VITALS}"]
    # The part left out is said as one the system cannot search, never "not synced yet".
    assert "not synced yet" not in observation["sentence"]
    rest = (
        "Your provider's system cannot search your lab results and vital signs (Observation) "
        "for vital signs, so that part is not synced. Nothing failed: this is a limit of that "
        "system."
    )
    assert rest in after.explanation["sentences"]
    assert rest in text(after.status_page)
    assert after.explanation["unsearchable_parts"] == {"Observation": [f"category={VITALS}"]}
    assert after.health["grants"]["type_states"]["unsearchable"] == {}
    assert after.health["status"] == "ok"
    assert after.webhooks[-1]["data"]["explanation"]["unsearchable_parts"] == {
        "Observation": [f"category={VITALS}"]
    }
