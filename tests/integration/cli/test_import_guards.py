"""``tenants import`` as a hostile or careless bundle would use it: real processes, real HTTP.

A published brands bundle naming ``http://127.0.0.1:…`` would make a *loopback tenant*, whose
discovery may then name any endpoint on this machine; and one ``--redirect-uri`` for all
imported tenants would put them all on one callback, where only ``iss`` stands between them and
the OAuth mix-up. Both are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db import repo
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.settings import Settings
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.cli.runner import syncsvc

Sessionmaker = async_sessionmaker[AsyncSession]

DATA = Path(__file__).resolve().parents[2] / "data" / "endpoints"


def _brands_bundle(address: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "fullUrl": "https://brands.example.org/Organization/here",
                "resource": {
                    "resourceType": "Organization",
                    "id": "here",
                    "active": True,
                    "name": "Here Clinic",
                    "endpoint": [{"reference": "Endpoint/here"}],
                },
            },
            {
                "fullUrl": "https://brands.example.org/Endpoint/here",
                "resource": {
                    "resourceType": "Endpoint",
                    "id": "here",
                    "status": "active",
                    "connectionType": {
                        "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                        "code": "hl7-fhir-rest",
                    },
                    "address": address,
                },
            },
        ],
    }


async def _tenant_count(sessionmaker: Sessionmaker) -> int:
    async with sessionmaker() as session:
        return len(await repo.list_tenants(session))


async def test_a_bundle_naming_this_machine_is_not_imported_without_allow_loopback(
    settings: Settings, sandbox: RunningSandbox, sessionmaker: Sessionmaker, tmp_path: Path
) -> None:
    base = sandbox.urls(GENERIC_TENANT).fhir_base  # a server on this machine
    assert base.startswith("http://127.0.0.1:")
    bundle = tmp_path / "brands.json"
    bundle.write_bytes(orjson.dumps(_brands_bundle(base)))
    seen = len(sandbox.state.request_log)

    refused = await syncsvc(
        settings, "tenants", "import", str(bundle), "--client-id", "syncsvc-public",
        "--discover", "--directory", "here", "--json",
    )  # fmt: skip
    summary = refused.json()
    assert isinstance(summary, dict)
    assert summary["imported"] == 0
    [skipped] = summary["skipped"]
    assert "is on this machine (loopback; --allow-loopback)" in skipped
    assert len(sandbox.state.request_log) == seen  # discovery never asked it
    assert await _tenant_count(sessionmaker) == 0

    # The control: with the flag (development), the same bundle imports and discovers.
    allowed = await syncsvc(
        settings, "tenants", "import", str(bundle), "--client-id", "syncsvc-public",
        "--discover", "--allow-loopback", "--directory", "here", "--json",
    )  # fmt: skip
    assert allowed.code == 0, allowed.stderr
    assert allowed.json() == {
        "format": "brands",
        "imported": 1,
        "skipped": [],
        "logos": {"shown": 0, "fetched": 0, "stored": 0, "deleted": 0, "failed": []},
    }
    assert any("smart-configuration" in e.url for e in list(sandbox.state.request_log)[seen:])
    assert await _tenant_count(sessionmaker) == 1


async def test_a_shared_redirect_uri_is_refused_on_import_and_a_template_gives_each_its_own(
    settings: Settings, sessionmaker: Sessionmaker
) -> None:
    bundle = str(DATA / "oracle_current.json")
    refusals = {
        "https://sync.example/callback": "would be shared by every imported tenant",
        "https://sync.example/callback/clinic": "would be shared by every imported tenant",
        "https://sync.example/cb/{name}": "must end in /callback/{name}",
    }
    for redirect_uri, reason in refusals.items():
        refused = await syncsvc(
            settings, "tenants", "import", bundle, "--client-id", "syncsvc-public",
            "--redirect-uri", redirect_uri,
        )  # fmt: skip
        assert refused.code == 2, refused.stderr
        assert reason in refused.stderr
        assert "Traceback" not in refused.stderr
        assert await _tenant_count(sessionmaker) == 0

    templated = await syncsvc(
        settings, "tenants", "import", bundle, "--client-id", "syncsvc-public",
        "--redirect-uri", "https://sync.example/callback/{name}", "--json",
    )  # fmt: skip
    assert templated.code == 0, templated.stderr
    async with sessionmaker() as session:
        tenants = await repo.list_tenants(session)
    assert tenants
    for tenant in tenants:
        assert tenant.redirect_uri == f"https://sync.example/callback/{tenant.name}"
