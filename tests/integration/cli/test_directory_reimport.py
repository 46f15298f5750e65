"""Re-importing directories as they change: real ``tenants import`` processes, both databases.

A directory renames organisations, adds one whose name another tenant already holds, and brands
bundles come from several publishers. Tenants are matched by FHIR base, never by the name the
directory gives, and each brands bundle is a directory of its own.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db import repo
from syncsvc.db.models.connections import Tenant
from syncsvc.directory.picker import find_providers
from syncsvc.directory.tenants import TenantSpec, register_tenant
from syncsvc.settings import Settings
from syncsvc.vault import Vault
from tests.fixtures.directory import brands_directory, oracle_directory, organisations
from tests.integration.cli.runner import Finished, syncsvc

Sessionmaker = async_sessionmaker[AsyncSession]


async def _import(
    settings: Settings, folder: Path, name: str, bundle: dict[str, Any], *extra: str
) -> Finished:
    path = folder / f"{name}.json"
    path.write_bytes(orjson.dumps(bundle))
    return await syncsvc(
        settings, "tenants", "import", str(path), "--client-id", "syncsvc-public", "--json",
        *extra,
    )  # fmt: skip


async def _tenants(sessionmaker: Sessionmaker) -> dict[str, Tenant]:
    async with sessionmaker() as session:
        return {t.fhir_base: t for t in await repo.list_tenants(session)}


async def _found(sessionmaker: Sessionmaker, query: str) -> list[str]:
    return [t.name for t in (await find_providers(sessionmaker, query)).tenants]


async def test_a_renamed_organisation_updates_its_tenant_and_a_new_one_takes_no_others_name(
    settings: Settings, sessionmaker: Sessionmaker, vault: Vault, tmp_path: Path
) -> None:
    # A tenant registered by hand holds the name the directory's Lakeview would get.
    hand = "https://fhir.lakeview.example.org/r4"
    async with aiohttp.ClientSession() as http:
        await register_tenant(
            sessionmaker, vault, http,
            TenantSpec(name="lakeview-general-hospital", fhir_base=hand, client_id="c",
                       redirect_uri=None, display_name="Lakeview (by hand)"),
            now=dt.datetime.now(dt.UTC), run_discovery=False,
        )  # fmt: skip
    orgs = organisations(30)
    first = await _import(settings, tmp_path, "oracle", oracle_directory(orgs))
    assert first.code == 0, first.stderr
    assert first.json()["imported"] == 30  # type: ignore[index]
    before = await _tenants(sessionmaker)
    assert before[hand].display_name == "Lakeview (by hand)"  # not repointed, not renamed
    lakeview = before[orgs[2].fhir_base]
    assert lakeview.display_name == "Lakeview General Hospital"
    assert lakeview.name.startswith("lakeview-general-hospital-")

    # The directory renames Abbeville (and Lakeview): the same tenants, with their new names.
    orgs[0] = replace(orgs[0], name="Abbeville Regional Health")
    orgs[2] = replace(orgs[2], name="Lakeshore Medical")
    again = await _import(settings, tmp_path, "oracle", oracle_directory(orgs))
    assert again.code == 0, again.stderr
    assert again.json()["imported"] == 30  # type: ignore[index]
    after = await _tenants(sessionmaker)
    assert len(after) == 31
    for base in (orgs[0].fhir_base, orgs[2].fhir_base):
        assert (after[base].id, after[base].name) == (before[base].id, before[base].name)
        assert after[base].delisted_at is None
    assert after[orgs[0].fhir_base].display_name == "Abbeville Regional Health"
    assert await _found(sessionmaker, "abbeville regional") == ["abbeville-general-hospital"]
    assert await _found(sessionmaker, "abbeville general") == []
    assert await _found(sessionmaker, "lakeshore") == [lakeview.name]


async def test_each_brands_bundle_is_a_directory_of_its_own(
    settings: Settings, sessionmaker: Sessionmaker, tmp_path: Path
) -> None:
    north = brands_directory("https://fhir.north.example.org/r4")
    south = brands_directory("https://fhir.south.example.org/r4")

    # Without a name, a second brands bundle's re-import would delist the first's tenants.
    unnamed = await _import(settings, tmp_path, "north", north)
    assert unnamed.code == 2
    assert "a brands bundle needs --directory NAME" in unnamed.stderr
    assert await _tenants(sessionmaker) == {}
    bad = await _import(settings, tmp_path, "north", north, "--directory", "North Brands")
    assert bad.code == 2
    assert "lower-case letters" in bad.stderr

    for name, bundle in (("north", north), ("south", south), ("north", north)):
        done = await _import(settings, tmp_path, name, bundle, "--directory", name)
        assert done.code == 0, done.stderr
        assert done.json()["imported"] == 1  # type: ignore[index]
    tenants = await _tenants(sessionmaker)
    assert [t.directory for t in tenants.values()] == ["north", "south"]
    assert all(t.delisted_at is None for t in tenants.values())
    assert len(await _found(sessionmaker, "acadiana")) == 2
