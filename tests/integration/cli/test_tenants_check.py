"""``syncsvc tenants check`` (and the ``tenants add`` warnings) on sandbox tenants set up to show
each likely cause: real processes against the sandbox over loopback."""

from __future__ import annotations

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.sandbox.server import RunningSandbox
from syncsvc.settings import Settings
from syncsvc.vault import Vault
from tests.fixtures.sandbox import CERNER_TENANT, GENERIC_TENANT
from tests.integration.cli.runner import syncsvc
from tests.integration.connected import connect_patient, register_sandbox_tenant

Sessionmaker = async_sessionmaker[AsyncSession]
PRODUCTION_TRIM = ["openid", "fhirUser", "launch", "online_access"]


async def test_discovery_without_patient_scopes_or_offline_access_is_warned_and_explained(
    settings: Settings, sandbox: RunningSandbox, sessionmaker: Sessionmaker
) -> None:
    sandbox.tenant(CERNER_TENANT).policy.trim_to = PRODUCTION_TRIM
    added = await syncsvc(
        settings,
        "tenants", "add", "--name", "cerner", "--base", sandbox.urls(CERNER_TENANT).fhir_base,
        "--vendor", "cerner", "--client-id", "syncsvc-public", "--json",
    )  # fmt: skip
    assert added.code == 0, added.stderr
    assert "warning: [no_patient_scopes]" in added.stderr
    assert "warning: [no_offline_access]" in added.stderr
    summary = added.json()
    assert isinstance(summary, dict)
    assert [w.split("]")[0] for w in summary["warnings"]] == [
        "[no_patient_scopes",
        "[no_offline_access",
    ]

    checked = await syncsvc(settings, "tenants", "check", "cerner")
    assert checked.code == 0, checked.stderr
    assert "[no_patient_scopes] " in checked.stdout
    assert "advertises no patient resource scopes" in checked.stdout
    assert "offline_access in scopes_supported and permission-offline in capabilities" in (
        checked.stdout
    )

    sandbox.tenant(GENERIC_TENANT).policy.trim_to = None
    fine = await syncsvc(
        settings,
        "tenants", "add", "--name", "generic", "--base", sandbox.urls(GENERIC_TENANT).fhir_base,
        "--client-id", "syncsvc-public",
    )  # fmt: skip
    assert fine.code == 0, fine.stderr
    assert "warning" not in fine.stderr
    clean = await syncsvc(settings, "tenants", "check", "generic", "--json")
    body = clean.json()
    assert isinstance(body, dict)
    assert body["findings"] == []
    assert (await syncsvc(settings, "tenants", "check", "nobody")).code == 1


async def test_types_never_granted_and_a_registration_not_propagated(
    settings: Settings,
    sandbox: RunningSandbox,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
) -> None:
    # Procedure is missing from the registration everywhere; Condition only at the Cerner
    # tenant, where the registration change has not arrived.
    for tenant_id in (CERNER_TENANT, GENERIC_TENANT):
        sandbox.tenant(tenant_id).policy.missing_scopes = [
            "patient/Procedure.read",
            "patient/Procedure.rs",
        ]
    sandbox.tenant(CERNER_TENANT).policy.missing_scopes += [
        "patient/Condition.read",
        "patient/Condition.rs",
    ]
    for tenant_id, name in ((CERNER_TENANT, "cerner"), (GENERIC_TENANT, "generic")):
        tenant = await register_sandbox_tenant(
            sessionmaker, vault, http, sandbox, tenant_id, name=name
        )
        await connect_patient(
            sessionmaker, vault, http, sandbox, tenant, sandbox_tenant=tenant_id, user_id=name
        )

    checked = await syncsvc(settings, "tenants", "check", "cerner", "--json")
    assert checked.code == 0, checked.stderr
    body = checked.json()
    assert isinstance(body, dict)
    found = {f["id"]: f["message"] for f in body["findings"]}
    assert set(found) == {"types_never_granted", "registration_not_propagated"}
    assert found["types_never_granted"].startswith("Procedure requested but granted to no")
    assert "Condition" not in found["types_never_granted"]
    assert found["registration_not_propagated"].startswith(
        "Condition is granted to this client at generic but never at"
    )
    other = await syncsvc(settings, "tenants", "check", "generic")
    assert "[types_never_granted] Procedure requested" in other.stdout
    assert "registration_not_propagated" not in other.stdout
