"""SMART v2 granular scopes end to end: asked for, granted in parts, searched within, told.

A sandbox tenant grants Observation for some categories only. syncsvc connects through the real
pages, pulls through the real runner, and the sandbox's request log proves no search went
beyond the grant (nor was refused). Every surface (status page, ``connections show``, the host
API, webhooks) says which parts were shared, in the same words. A refresh that withdraws or adds
a category is told as a narrowed or widened grant, keeps what was synced, and pulls a new part in
full (at the next claim when the refresh happened inside a sync). The scope syntax asked in
follows the server's capabilities or the tenant's option.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import aiohttp
import orjson
from sqlalchemy import select

from syncsvc.db.models.activity import Event
from syncsvc.db.models.connections import Connection
from syncsvc.db.models.records import Resource
from syncsvc.sandbox.data import Entry
from syncsvc.sandbox.fhir import data_store
from syncsvc.sandbox.patient import ScriptedPatient
from syncsvc.sync.context import utcnow
from syncsvc.web.keys import SERVICES
from tests.fixtures.sandbox import EPIC_TENANT, GENERIC_TENANT
from tests.integration.cli.runner import syncsvc
from tests.integration.grants.surfaces import Clock, read_surfaces, sync, text
from tests.integration.web.flows import Flow

OBS = "http://terminology.hl7.org/CodeSystem/observation-category"
LAB = f"{OBS}|laboratory"
VITALS = f"{OBS}|vital-signs"
#: Past the sync interval (six hours): the next tick syncs, and refreshes the expired token first.
SYNC_DUE = 7 * 3600
PARTLY = (
    "Your provider shared only part of your lab results and vital signs (Observation): "
    "laboratory results only; the rest is not synced."
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


async def _stored_categories(flow: Flow, connection_id: str) -> dict[str, set[str]]:
    """Each live stored Observation's category tokens, by id."""
    async with flow.service.app[SERVICES].sessionmaker() as session:
        rows = await session.scalars(
            select(Resource).where(
                Resource.connection_id == connection_id,
                Resource.resource_type == "Observation",
                Resource.deleted_at.is_(None),
            )
        )
        found = {}
        for row in rows:
            body = orjson.loads(row.body)
            found[row.resource_id] = {
                f"{c['system']}|{c['code']}" for cat in body["category"] for c in cat["coding"]
            }
    return found


async def _connect(flow: Flow, patient: ScriptedPatient, sandbox_tenant: str, name: str) -> None:
    await flow.register(sandbox_tenant, name=name)
    page = await patient.connect(await flow.link("user-1", tenant=name))
    assert page.status == 200, page.body


async def test_a_category_qualified_grant_is_searched_only_within_it(
    flow: Flow, operator: aiohttp.ClientSession
) -> None:
    flow.sandbox.tenant(GENERIC_TENANT).policy.granted_categories = {"Observation": [LAB]}
    async with ScriptedPatient(username="nancysmart") as patient:
        await _connect(flow, patient, GENERIC_TENANT, "generic")
        connection = await flow.only_connection()
        assert "patient/Observation.rs" in connection.requested_scopes
        assert f"patient/Observation.rs?category={LAB}" in connection.granted_scopes
        logged = len(flow.sandbox.state.request_log)
        assert (await sync(flow)).sync == {"ok": 1}
        seen = await read_surfaces(flow, patient, operator, connection.id)

    # Only the granted category was searched, and nothing was refused.
    searches = _observation_searches(flow, logged)
    assert searches
    assert all(query.get("category") == [LAB] for query in searches)
    assert _refused(flow) == []
    stored = await _stored_categories(flow, connection.id)
    assert stored
    assert all(LAB in tokens for tokens in stored.values())
    # The sandbox holds vital signs of Nancy's too: the search could have found them.
    assert any(
        VITALS in entry.categories
        for entry in _bucket(flow, GENERIC_TENANT, "12724066", "Observation")
    )

    # Every surface says which part was shared, in the same words.
    seen.assert_agree()
    observation = next(t for t in seen.api["types"] if t["type"] == "Observation")
    assert observation["status"] == "ok"
    assert observation["parts"] == [f"category={LAB}"]
    assert observation["shared"] == "laboratory results only"
    assert observation["sentence"].startswith(
        f"Lab results and vital signs (Observation), laboratory results only: {len(stored)},"
    )
    cli_line = next(t for t in seen.cli["types"] if t["type"] == "Observation")
    assert cli_line["shared"] == observation["shared"]
    assert cli_line["parts"] == observation["parts"]
    assert PARTLY in seen.explanation["sentences"]
    assert PARTLY in text(seen.cli_text)
    page = text(seen.status_page)
    assert "lab results and vital signs (Observation): laboratory results only" in page
    [completed] = [h for h in seen.webhooks if h["type"] == "sync.completed"]
    assert PARTLY in completed["data"]["explanation"]["sentences"]
    condition = next(t for t in seen.api["types"] if t["type"] == "Condition")
    assert condition["parts"] is None
    assert condition["shared"] is None


def _bucket(flow: Flow, tenant_id: str, patient_id: str, resource_type: str) -> list[Entry]:
    store = data_store(flow.sandbox.app, flow.sandbox.state)
    bucket = store.bucket(flow.sandbox.tenant(tenant_id), patient_id, resource_type)
    assert bucket is not None
    return list(bucket.entries)


async def test_epic_category_variants_are_intersected_with_the_grant(
    flow: Flow, operator: aiohttp.ClientSession
) -> None:
    flow.sandbox.tenant(EPIC_TENANT).policy.granted_categories = {"Observation": [LAB, VITALS]}
    async with ScriptedPatient(username="nancysmart") as patient:
        await _connect(flow, patient, EPIC_TENANT, "epic")
        connection = await flow.only_connection()
        logged = len(flow.sandbox.state.request_log)
        assert (await sync(flow)).sync == {"ok": 1}
        seen = await read_surfaces(flow, patient, operator, connection.id)

    # Epic needs a category on every Observation search: of its six, the two granted.
    categories = sorted(q["category"][0] for q in _observation_searches(flow, logged))
    assert categories == [LAB, VITALS]
    assert _refused(flow) == []
    seen.assert_agree()
    observation = next(t for t in seen.api["types"] if t["type"] == "Observation")
    assert observation["shared"] == "laboratory results and vital signs only"
    stored = await _stored_categories(flow, connection.id)
    assert {token for tokens in stored.values() for token in tokens} & {LAB, VITALS}
    assert all(tokens & {LAB, VITALS} for tokens in stored.values())


async def test_a_category_withdrawn_at_refresh_narrows_the_type_and_keeps_its_data(
    flow: Flow, operator: aiohttp.ClientSession
) -> None:
    policy = flow.sandbox.tenant(GENERIC_TENANT).policy
    policy.granted_categories = {"Observation": [LAB, VITALS]}
    clock = Clock(flow)
    async with ScriptedPatient(username="nancysmart") as patient:
        await _connect(flow, patient, GENERIC_TENANT, "generic")
        connection = await flow.only_connection()
        assert (await sync(flow, clock.now)).sync == {"ok": 1}
        before = await _stored_categories(flow, connection.id)
        assert any(VITALS in tokens for tokens in before.values())
        # The patient withdraws vital signs at the EHR: the next refresh grants labs only.
        policy.granted_categories = {"Observation": [LAB]}
        clock.advance(SYNC_DUE)
        report = await sync(flow, clock.now)
        assert report.refresh == {"refreshed": 1}
        # A full pull afterwards searches labs only and takes nothing kept for vanished.
        logged = len(flow.sandbox.state.request_log)
        full = await syncsvc(
            flow.service.settings, "connections", "sync", connection.id, "--now", "--full"
        )
        assert full.code == 0, full.stderr
        narrowed_searches = _observation_searches(flow, logged)
        kept = await _stored_categories(flow, connection.id)
        seen = await read_surfaces(flow, patient, operator, connection.id)
        # Shared again: the part is no longer said to be withdrawn, and is pulled in full.
        policy.granted_categories = {"Observation": [LAB, VITALS]}
        policy.widen_on_refresh = True
        clock.advance(SYNC_DUE)
        logged = len(flow.sandbox.state.request_log)
        # The sync needs a fresh token: the refresh that gets it widens the grant.
        assert (await sync(flow, clock.now)).sync == {"ok": 1}
        widened = await flow.only_connection()
        assert f"patient/Observation.rs?category={VITALS}" in widened.granted_scopes
        # The next sync pulls the part shared again.
        clock.advance(SYNC_DUE)
        logged = len(flow.sandbox.state.request_log)
        assert (await sync(flow, clock.now)).sync == {"ok": 1}
        again = await read_surfaces(flow, patient, operator, connection.id)

    assert narrowed_searches
    assert all(q.get("category") == [LAB] for q in narrowed_searches)
    assert kept == before  # the vital signs were not searched, and not taken for vanished
    assert _refused(flow) == []
    seen.assert_agree()
    assert seen.api["status"] == "active"
    observation = next(t for t in seen.api["types"] if t["type"] == "Observation")
    assert observation["status"] == "ok"
    assert observation["shared"] == "laboratory results only"
    assert PARTLY in seen.explanation["sentences"]
    stopped = (
        "Lab results and vital signs (Observation): your provider stopped sharing vital signs; "
        "what was synced of them is kept here but no longer updated."
    )
    assert stopped in seen.explanation["sentences"]
    assert stopped in text(seen.status_page)
    [changed, *_] = [h for h in seen.webhooks if h["type"] == "connection.scopes_changed"]
    assert changed["data"]["withdrawn"] == []
    assert changed["data"]["added"] == []
    assert changed["data"]["narrowed"] == {"Observation": [f"category={VITALS}"]}
    assert changed["data"]["widened"] == {}
    async with flow.service.app[SERVICES].sessionmaker() as session:
        events = list(
            await session.scalars(
                select(Event)
                .where(Event.kind == "scopes", Event.connection_id == connection.id)
                .order_by(Event.at)
            )
        )
    assert [(e.outcome, e.resource_type, e.error_class) for e in events] == [
        ("narrowed", "Observation", "scope_withdrawn"),
        ("widened", "Observation", None),
    ]

    again.assert_agree()
    assert not any("stopped sharing" in s for s in again.explanation["sentences"])
    searches = _observation_searches(flow, logged)
    assert sorted(q["category"][0] for q in searches) == [LAB, VITALS]
    assert all("_lastUpdated" not in q for q in searches)
    # Everything synced before the narrowing is still there, nothing taken for vanished.
    assert set(before) <= set(await _stored_categories(flow, connection.id))


async def test_a_category_added_at_refresh_is_pulled_in_full(
    flow: Flow, operator: aiohttp.ClientSession
) -> None:
    policy = flow.sandbox.tenant(GENERIC_TENANT).policy
    policy.granted_categories = {"Observation": [LAB]}
    policy.widen_on_refresh = True
    clock = Clock(flow)
    async with ScriptedPatient(username="nancysmart") as patient:
        await _connect(flow, patient, GENERIC_TENANT, "generic")
        connection = await flow.only_connection()
        assert (await sync(flow, clock.now)).sync == {"ok": 1}
        labs = await _stored_categories(flow, connection.id)
        policy.granted_categories = {"Observation": [LAB, VITALS]}
        clock.advance(SYNC_DUE)
        logged = len(flow.sandbox.state.request_log)
        report = await sync(flow, clock.now)
        assert report.refresh == {"refreshed": 1}
        assert report.sync == {"ok": 1}
        seen = await read_surfaces(flow, patient, operator, connection.id)

    # The new part is pulled in full (no _lastUpdated), the old one with it.
    searches = _observation_searches(flow, logged)
    assert sorted(q["category"][0] for q in searches) == [LAB, VITALS]
    assert all("_lastUpdated" not in q for q in searches)
    stored = await _stored_categories(flow, connection.id)
    assert set(labs) < set(stored)
    assert any(VITALS in tokens for tokens in stored.values())
    seen.assert_agree()
    observation = next(t for t in seen.api["types"] if t["type"] == "Observation")
    assert observation["shared"] == "laboratory results and vital signs only"
    assert observation["status"] == "ok"
    [changed] = [h for h in seen.webhooks if h["type"] == "connection.scopes_changed"]
    assert changed["data"]["widened"] == {"Observation": [f"category={VITALS}"]}
    assert changed["data"]["narrowed"] == {}
    assert not any("stopped sharing" in s for s in seen.explanation["sentences"])


async def test_the_scope_syntax_follows_the_server_and_the_tenant_option(flow: Flow) -> None:
    policy = flow.sandbox.tenant(GENERIC_TENANT).policy
    settings = flow.service.settings

    async def launch(user_id: str) -> list[str]:
        async with ScriptedPatient(username="nancysmart") as patient:
            page = await patient.connect(await flow.link(user_id, tenant="generic"))
            assert page.status == 200, page.body
        [connection] = [c for c in await flow.connections() if c.user_id == user_id]
        # The tenant's own types (referenced types are asked for beside them where listed).
        own = ("patient/Patient.", "patient/Observation.", "patient/Condition.")
        return [s for s in connection.requested_scopes if s.startswith(own)]

    # A server speaking v1 and v2: v2.
    await flow.register(GENERIC_TENANT, name="generic")
    assert await launch("user-v2") == [
        "patient/Patient.rs",
        "patient/Observation.rs",
        "patient/Condition.rs",
    ]
    # The operator's option overrides it.
    changed = await syncsvc(settings, "tenants", "set", "generic", "--scope-syntax", "v1", "--json")
    assert changed.code == 0, changed.stderr
    assert changed.json()["scope_syntax"] == "v1"
    assert changed.json()["scope_syntax_asked"] == "v1"
    assert await launch("user-option") == [
        "patient/Patient.read",
        "patient/Observation.read",
        "patient/Condition.read",
    ]
    # A server speaking only v1, the option back at auto: v1.
    assert (
        await syncsvc(settings, "tenants", "set", "generic", "--scope-syntax", "auto")
    ).code == 0
    policy.scope_syntax = "v1"
    await flow.register(GENERIC_TENANT, name="generic")  # discovery again
    shown = await syncsvc(settings, "tenants", "show", "generic", "--json")
    assert shown.json()["scope_syntax"] == "auto"
    assert shown.json()["scope_syntax_asked"] == "v1"
    assert await launch("user-v1") == [
        "patient/Patient.read",
        "patient/Observation.read",
        "patient/Condition.read",
    ]


async def _connection(flow: Flow, connection_id: str) -> Connection:
    async with flow.service.app[SERVICES].sessionmaker() as session:
        connection = await session.get(Connection, connection_id)
        assert connection is not None
        return connection


async def test_a_part_added_by_a_refresh_inside_a_sync_is_pulled_at_the_next_claim(
    flow: Flow, operator: aiohttp.ClientSession
) -> None:
    policy = flow.sandbox.tenant(GENERIC_TENANT).policy
    policy.granted_categories = {"Observation": [LAB]}
    policy.widen_on_refresh = True
    async with ScriptedPatient(username="nancysmart") as patient:
        await _connect(flow, patient, GENERIC_TENANT, "generic")
        connection = await flow.only_connection()
        assert (await sync(flow)).sync == {"ok": 1}
        # The patient shares vital signs too. The EHR's clock passes the access token's expiry
        # while syncsvc still trusts it, so the refresh happens inside the next sync (after a
        # refused request), and that refresh widens the grant.
        policy.granted_categories = {"Observation": [LAB, VITALS]}
        flow.sandbox.state.clock_offset += 3700
        async with flow.api.post(f"/api/v1/connections/{connection.id}/sync") as response:
            assert response.status == 202, await response.text()
        logged = len(flow.sandbox.state.request_log)
        report = await sync(flow)
        assert report.refresh == {}  # not before the pull: inside it
        assert report.sync == {"ok": 1}
        inside = _observation_searches(flow, logged)
        widened = await _connection(flow, connection.id)
        assert f"patient/Observation.rs?category={VITALS}" in widened.granted_scopes
        # Due at once for the part the run planned without, not a whole interval later.
        assert widened.next_sync_at is not None
        assert widened.next_sync_at <= utcnow()
        logged = len(flow.sandbox.state.request_log)
        assert (await sync(flow)).sync == {"ok": 1}
        next_claim = _observation_searches(flow, logged)
        seen = await read_surfaces(flow, patient, operator, connection.id)

    assert [e for e in flow.sandbox.state.request_log if e.status == 401]
    assert inside
    assert all(q.get("category") == [LAB] for q in inside)
    # The next claim pulls the new part in full.
    assert sorted(q["category"][0] for q in next_claim) == [LAB, VITALS]
    assert all("_lastUpdated" not in q for q in next_claim)
    seen.assert_agree()
    observation = next(t for t in seen.api["types"] if t["type"] == "Observation")
    assert observation["status"] == "ok"
    assert observation["shared"] == "laboratory results and vital signs only"
    assert "not synced yet" not in observation["sentence"]
    # And afterwards the normal interval again.
    settled = await _connection(flow, connection.id)
    assert settled.next_sync_at is not None
    assert settled.next_sync_at > utcnow()
