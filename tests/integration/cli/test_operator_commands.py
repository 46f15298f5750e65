"""``tenants``, ``connect-link`` and ``sync --once`` as an operator runs them: real processes."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db import repo
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.settings import Settings
from syncsvc.smart.scopes import DEFAULT_RESOURCE_TYPES
from syncsvc.sync.tenant_config import client_credentials
from syncsvc.vault import Vault
from tests.fixtures.sandbox import CERNER_TENANT, GENERIC_TENANT
from tests.integration.cli.runner import syncsvc
from tests.integration.connected import register_and_connect
from tests.integration.dbdata import add_tenant

Sessionmaker = async_sessionmaker[AsyncSession]

DATA = Path(__file__).resolve().parents[2] / "data" / "endpoints"


async def test_tenants_add_show_list_and_remove(
    settings: Settings, sandbox: RunningSandbox, sessionmaker: Sessionmaker
) -> None:
    base = sandbox.urls(CERNER_TENANT).fhir_base
    added = await syncsvc(
        settings,
        "tenants", "add", "--name", "cerner", "--base", base + "/", "--vendor", "cerner",
        "--client-id", "syncsvc-confidential", "--client-secret", "sandbox-secret",
    )  # fmt: skip
    assert added.code == 0, added.stderr
    assert "discovery succeeded" in added.stdout
    assert sandbox.urls(CERNER_TENANT).token in added.stdout
    assert "sandbox-secret" not in added.stdout + added.stderr

    shown = await syncsvc(settings, "tenants", "show", "cerner", "--json")
    assert shown.code == 0, shown.stderr
    detail = shown.json()
    assert isinstance(detail, dict)
    assert detail["fhir_base"] == base  # normalised: no trailing slash
    assert detail["client_secret_set"] is True
    assert detail["auth_method"] == "client_secret_basic"
    assert detail["discovery"]["source"] == "well-known"
    assert "sandbox-secret" not in shown.stdout

    listed = await syncsvc(settings, "tenants", "list")
    assert "cerner\tcerner\t0 connections" in listed.stdout

    removed = await syncsvc(settings, "tenants", "remove", "cerner")
    assert removed.code == 0, removed.stderr
    gone = await syncsvc(settings, "tenants", "show", "cerner")
    assert gone.code == 1
    assert "no tenant named 'cerner'" in gone.stderr


async def test_tenants_add_with_a_wrong_base_fails_clearly(
    settings: Settings, sandbox: RunningSandbox, sessionmaker: Sessionmaker
) -> None:
    result = await syncsvc(
        settings,
        "tenants", "add", "--name", "nowhere", "--base", f"{sandbox.origin}/fhir/no-such-tenant",
        "--client-id", "syncsvc-public",
    )  # fmt: skip
    assert result.code == 1
    assert "publishes neither .well-known/smart-configuration" in result.stderr
    assert "Traceback" not in result.stderr


async def test_tenants_import_is_idempotent(settings: Settings, sessionmaker: Sessionmaker) -> None:
    first = await syncsvc(
        settings, "tenants", "import", str(DATA / "oracle_current.json"),
        "--client-id", "syncsvc-public", "--json",
    )  # fmt: skip
    assert first.code == 0, first.stderr
    summary = first.json()
    assert isinstance(summary, dict)
    assert summary["imported"] >= 1
    again = await syncsvc(
        settings, "tenants", "import", str(DATA / "oracle_current.json"),
        "--client-id", "syncsvc-public", "--json",
    )  # fmt: skip
    assert again.json() == summary
    listed = await syncsvc(settings, "tenants", "list", "--json")
    tenants = listed.json()
    assert isinstance(tenants, list)
    assert len(tenants) == summary["imported"]
    assert {t["vendor"] for t in tenants} == {"cerner"}


async def test_connect_link_names_the_user_and_tenant(
    settings: Settings, sessionmaker: Sessionmaker
) -> None:
    async with sessionmaker.begin() as session:
        await add_tenant(session, name="clinic")
    made = await syncsvc(settings, "connect-link", "--user", "u-42", "--tenant", "clinic")
    assert made.code == 0, made.stderr
    assert made.stdout.startswith(f"{settings.public_url}/connect?link=")
    unknown = await syncsvc(settings, "connect-link", "--user", "u-42", "--tenant", "nope")
    assert unknown.code == 1
    assert "no tenant named 'nope'" in unknown.stderr


async def test_sync_once_pulls_what_is_due_and_reports_json(
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
) -> None:
    await register_and_connect(sessionmaker, vault, http, sandbox, GENERIC_TENANT)
    result = await syncsvc(settings, "sync", "--once")
    assert result.code == 0, result.stderr
    report = result.json()
    assert isinstance(report, dict)
    assert report["connections"] == 1
    assert report["sync"] == {"ok": 1}
    assert report["resources"]["new"] > 0
    nothing = await syncsvc(settings, "sync", "--once")
    assert nothing.json() == {
        "connections": 0, "refresh": {}, "sync": {}, "resources": {}, "failures": 0,
    }  # fmt: skip


async def test_tenants_add_takes_query_plan_overrides(
    settings: Settings, sandbox: RunningSandbox, sessionmaker: Sessionmaker, tmp_path: Path
) -> None:
    plans = tmp_path / "plans.json"
    plans.write_text('{"Observation": {"count": 50}}', encoding="utf-8")
    base = sandbox.urls(GENERIC_TENANT).fhir_base
    added = await syncsvc(
        settings,
        "tenants", "add", "--name", "generic", "--base", base, "--client-id", "syncsvc-public",
        "--plans", str(plans), "--json",
    )  # fmt: skip
    assert added.code == 0, added.stderr
    summary = added.json()
    assert isinstance(summary, dict)
    assert summary["plan_overrides"] == {"Observation": {"count": 50}}
    plans.write_text('{"Observation": {"no_such_field": 1}}', encoding="utf-8")
    refused = await syncsvc(
        settings,
        "tenants", "add", "--name", "other", "--base", base, "--client-id", "syncsvc-public",
        "--plans", str(plans),
    )  # fmt: skip
    assert refused.code == 2  # wrong input, not failed work
    assert "plan overrides are not valid" in refused.stderr


async def test_tenants_add_reads_the_client_secret_from_a_file(
    settings: Settings, sandbox: RunningSandbox, sessionmaker: Sessionmaker, tmp_path: Path
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("sandbox-secret\n", encoding="utf-8")
    added = await syncsvc(
        settings,
        "tenants", "add", "--name", "cerner", "--base", sandbox.urls(CERNER_TENANT).fhir_base,
        "--client-id", "syncsvc-confidential", "--client-secret-file", str(secret_file), "--json",
    )  # fmt: skip
    assert added.code == 0, added.stderr
    summary = added.json()
    assert isinstance(summary, dict)
    assert summary["auth_method"] == "client_secret_basic"
    assert summary["client_secret_set"] is True
    assert "sandbox-secret" not in added.stdout + added.stderr
    async with sessionmaker() as session:
        tenant = await repo.get_tenant_by_name(session, "cerner")
    assert tenant is not None
    assert client_credentials(Vault(settings.vault_keys), tenant).secret == "sandbox-secret"


async def test_tenants_add_asks_for_us_core_and_a_stored_list_is_never_widened(
    settings: Settings, sandbox: RunningSandbox, sessionmaker: Sessionmaker
) -> None:
    base = sandbox.urls(GENERIC_TENANT).fhir_base
    add = ("tenants", "add", "--name", "generic", "--base", base, "--client-id", "syncsvc-public")

    first = await syncsvc(settings, *add, "--json")
    assert first.code == 0, first.stderr
    assert first.json()["resource_types"] == list(DEFAULT_RESOURCE_TYPES)
    chosen = await syncsvc(settings, *add, "--scopes", "Patient", "Observation", "--json")
    assert chosen.json()["resource_types"] == ["Patient", "Observation"]
    # Registered again without --scopes (as a re-import does): the operator's list stays.
    again = await syncsvc(settings, *add, "--json")

    assert again.code == 0, again.stderr
    assert again.json()["resource_types"] == ["Patient", "Observation"]
    async with sessionmaker() as session:
        tenant = await repo.get_tenant_by_name(session, "generic")
    assert tenant is not None
    assert tenant.configured_scopes == ["Patient", "Observation"]
