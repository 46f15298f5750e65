"""Types a tenant's server does not offer are ``unsupported`` on every surface, never failures.

A generic tenant whose CapabilityStatement leaves Coverage out, and Cerner- and Epic-shaped
tenants whose vendors search no Provenance per patient (Cerner: no ImagingStudy either): the
patient connects through the real pages, the real runner pulls, and the status page,
``connections show``, the host API, tenant health, the metrics and the webhooks all say the
same thing, while the run is ``ok`` and the type is never asked for.
"""

from __future__ import annotations

import aiohttp
import pytest

from syncsvc.sandbox.patient import ScriptedPatient
from syncsvc.smart.scopes import DEFAULT_RESOURCE_TYPES
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT
from tests.integration.grants.surfaces import read_surfaces, sync, text
from tests.integration.web.flows import Flow

COVERAGE_LINE = (
    "Insurance coverage (Coverage): your provider's system does not offer this, so it is not "
    "synced."
)


async def test_a_type_the_server_does_not_advertise_is_unsupported_everywhere(
    flow: Flow, operator: aiohttp.ClientSession
) -> None:
    flow.sandbox.tenant(GENERIC_TENANT).policy.unserved_types = ["Coverage"]
    await flow.register(GENERIC_TENANT, name="generic", resource_types=DEFAULT_RESOURCE_TYPES)
    async with ScriptedPatient(username="nancysmart") as patient:
        page = await patient.connect(await flow.link("user-1", tenant="generic"))
        assert page.status == 200, page.body
        assert (await sync(flow)).sync == {"ok": 1}
        connection = await flow.only_connection()
        seen = await read_surfaces(flow, patient, operator, connection.id)

    seen.assert_agree()
    coverage = next(t for t in seen.api["types"] if t["type"] == "Coverage")
    assert coverage["status"] == "unsupported"
    assert coverage["granted"] is False
    assert coverage["sentence"] == COVERAGE_LINE
    assert seen.explanation["unsupported_types"] == ["Coverage"]
    assert (
        "Not offered by your provider's system, so not synced: insurance coverage (Coverage)."
        in (text(seen.status_page))
    )
    # Not a failure: the run is ok, health is ok, and the operator sees the count.
    assert seen.health["status"] == "ok"
    assert seen.health["grants"]["type_states"]["unsupported"] == {"Coverage": 1}
    assert "Coverage unsupported" in text(seen.health_page)
    assert (
        seen.metric(
            "syncsvc_resource_type_states",
            tenant="generic",
            state="unsupported",
            resource_type="Coverage",
        )
        == 1
    )
    assert seen.webhooks[-1]["type"] == "sync.completed"
    assert seen.webhooks[-1]["data"]["outcome"] == "ok"
    assert seen.webhooks[-1]["data"]["explanation"]["unsupported_types"] == ["Coverage"]
    assert "Coverage" not in seen.webhooks[-1]["data"]["types"]
    # Never asked for: not in the scopes the patient approved, never searched.
    assert not any("Coverage" in scope for scope in seen.api["scopes"]["requested"])
    assert not [e for e in flow.sandbox.state.request_log if "/Coverage" in e.url]
    # Every other US Core type the server offers was pulled.
    pulled = {t["type"] for t in seen.api["types"] if t["status"] == "ok"}
    assert pulled == set(DEFAULT_RESOURCE_TYPES) - {"Coverage"}


@pytest.mark.parametrize(
    ("sandbox_tenant", "unsupported"),
    [(CERNER_TENANT, {"Provenance", "ImagingStudy"}), (EPIC_TENANT, {"Provenance"})],
)
async def test_types_a_vendor_cannot_search_are_unsupported_there(
    flow: Flow, operator: aiohttp.ClientSession, sandbox_tenant: str, unsupported: set[str]
) -> None:
    config = flow.sandbox.tenant(sandbox_tenant)
    # Confidential: Epic gives public clients no offline access (a degraded tenant of its own).
    await flow.register(
        sandbox_tenant,
        name=config.vendor,
        auth="client_secret_basic",
        resource_types=DEFAULT_RESOURCE_TYPES,
    )
    async with ScriptedPatient(username="nancysmart") as patient:
        page = await patient.connect(await flow.link("user-1", tenant=config.vendor))
        assert page.status == 200, page.body
        assert (await sync(flow)).sync == {"ok": 1}
        connection = await flow.only_connection()
        seen = await read_surfaces(flow, patient, operator, connection.id)

    seen.assert_agree()
    states = {t["type"]: t["status"] for t in seen.api["types"]}
    assert {t for t, s in states.items() if s == "unsupported"} == unsupported
    assert {t for t, s in states.items() if s == "ok"} == set(DEFAULT_RESOURCE_TYPES) - unsupported
    assert set(seen.explanation["unsupported_types"]) == unsupported
    assert seen.health["status"] == "ok"
    searched = [e.url for e in flow.sandbox.state.request_log]
    assert not [url for url in searched for t in unsupported if f"/{t}?" in url]
    for name in unsupported:
        assert (
            seen.metric(
                "syncsvc_resource_type_states",
                tenant=config.vendor,
                state="unsupported",
                resource_type=name,
            )
            == 1
        )
