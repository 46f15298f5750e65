"""The provider picker over a directory of Oracle Health's size, without JavaScript: real HTTP,
real ``tenants import`` processes, SQLite and PostgreSQL.

The directory is generated in the shape of Oracle Health's published list (about 1,400
organisations); Abbeville General Hospital in it points at the sandbox's Oracle-shaped tenant.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
from yarl import URL

from syncsvc.db import repo
from syncsvc.sandbox.patient import ScriptedPatient, parse_forms
from syncsvc.web.keys import SERVICES
from tests.fixtures.directory import (
    brands_directory,
    moved,
    oracle_directory,
    organisations,
)
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT
from tests.integration.cli.runner import syncsvc
from tests.integration.web.flows import Flow, new_link

DIRECTORY_SIZE = 1_400
ABBEVILLE_TENANT = "abbeville-general-hospital"
#: Any sign of a FHIR base on a patient page: Oracle's hosts, the sandbox's, a FHIR path.
FHIR_URL = re.compile(r"fhir-myrecord|127\.0\.0\.1:\d+/|/r4/|/fhir")


async def _import(flow: Flow, tmp_path: Path, bundle: dict[str, Any], directory: str) -> Any:
    path = tmp_path / f"{directory}.json"
    path.write_bytes(orjson.dumps(bundle))
    done = await syncsvc(
        flow.service.settings, "tenants", "import", str(path), "--client-id", "syncsvc-public",
        "--allow-loopback", "--directory", directory, "--json",
    )  # fmt: skip
    assert done.code == 0, done.stderr
    return done.json()


async def _page(flow: Flow, link: str, **query: str | int) -> tuple[str, list[str]]:
    """The connect page for ``link`` with ``query``, and the tenants it offers, in order."""
    async with flow.http.get(URL(link).update_query({k: str(v) for k, v in query.items()})) as r:
        assert r.status == 200
        body = await r.text()
    assert not FHIR_URL.search(body), FHIR_URL.search(body)
    return body, [f.fields["tenant"] for f in parse_forms(body) if "tenant" in f.fields]


async def test_patients_find_their_provider_in_a_directory_of_thousands(
    flow: Flow, tmp_path: Path
) -> None:
    # A provider the patient connected before, registered by hand.
    await flow.register(GENERIC_TENANT, name="generic")
    assert (await flow.connect("nancysmart", tenant="generic", user_id="user-picker")).status == 200
    orgs = organisations(DIRECTORY_SIZE, abbeville_base=flow.sandbox.urls(CERNER_TENANT).fhir_base)
    summary = await _import(flow, tmp_path, oracle_directory(orgs), "oracle-health")
    assert summary["imported"] == DIRECTORY_SIZE
    link = await flow.link("user-picker")

    # The first page: a search form and the patient's own provider, never the whole directory.
    first, offered = await _page(flow, link)
    assert len(first.encode()) < 50_000
    assert offered == ["generic"]
    assert "Your connection: Connected" in first
    assert 'name="q"' in first

    # Name prefixes, whatever the case and accents; Abbeville first, with its city and state.
    for typed in ("abbev", "ABBÉV", "abbeville gen"):
        body, found = await _page(flow, link, q=typed)
        assert found[0] == ABBEVILLE_TENANT, typed
        assert "Abbeville, LA" in body
    _, found = await _page(flow, link, q="hopital sainte")
    assert found[0] == "hopital-sainte-anne"
    # ZIP code and city.
    _, found = await _page(flow, link, q="70510")
    assert found == [ABBEVILLE_TENANT]
    _, found = await _page(flow, link, q="Abbeville LA")
    assert found[0] == ABBEVILLE_TENANT
    # The patient's provider is marked with its state where it is found.
    body, found = await _page(flow, link, q="generic smart")
    assert found == ["generic"]
    assert "Your connection: Connected" in body

    # The host application may start the search for the patient: a hint rides on the link.
    hinted = await new_link(flow.api, "user-picker", hint="70510")
    body, found = await _page(flow, hinted)
    assert found == [ABBEVILLE_TENANT]
    assert 'value="70510"' in body
    async with flow.api.post(
        "/api/v1/connect-links", json={"user_id": "user-picker", "hint": "x" * 101}
    ) as refused:
        assert refused.status == 400

    # Paging, 20 at a time: Salina has 47 organisations.
    salina = {o.name for o in orgs if o.city == "Salina"}
    pages = []
    for number in (1, 2, 3):
        body, found = await _page(flow, link, q="salina", page=number)
        pages.append(found)
        assert ("Next page" in body) == (number < 3)
        assert ("Previous page" in body) == (number > 1)
    assert [len(p) for p in pages] == [20, 20, len(salina) - 40]
    assert len({name for p in pages for name in p}) == len(salina)

    # A brand found by its alias, shown with its portal's name.
    brands = brands_directory(flow.sandbox.urls(EPIC_TENANT).fhir_base)
    assert (await _import(flow, tmp_path, brands, "bayou"))["imported"] == 1
    body, found = await _page(flow, link, q="acadiana")
    assert found == ["bayou-health-system"]
    assert "Bayou MyHealth" in body
    assert "Houma, LA" in body

    # Without JavaScript the patient starts the launch from the results.
    async with ScriptedPatient(username="wilmasmart") as patient:
        stopped = await patient.connect(
            f"{link}&q=abbev",
            provider=ABBEVILLE_TENANT,
            stop_before=flow.sandbox.urls(CERNER_TENANT).authorize,
        )
    assert stopped.url.startswith(flow.sandbox.urls(CERNER_TENANT).authorize)

    # Re-import: Abbeville moved, the last organisation left the directory.
    orgs[0] = moved(orgs[0], city="Kaplan", postal_code="70548")
    gone = orgs.pop()
    assert (await _import(flow, tmp_path, oracle_directory(orgs), "oracle-health"))[
        "imported"
    ] == DIRECTORY_SIZE - 1
    link = await flow.link("user-picker")
    body, found = await _page(flow, link, q="70548")
    assert found == [ABBEVILLE_TENANT]
    assert "Kaplan, LA" in body
    _, found = await _page(flow, link, q=gone.name)
    assert found == []
    _, found = await _page(flow, link, q="acadiana")  # another directory's tenants stay listed
    assert found == ["bayou-health-system"]
    async with flow.service.app[SERVICES].sessionmaker() as session:
        tenants = {t.fhir_base: t for t in await repo.list_tenants(session)}
    assert tenants[gone.fhir_base].delisted_at is not None  # marked, not deleted
    assert tenants[orgs[0].fhir_base].delisted_at is None
    assert tenants[orgs[0].fhir_base].postal_code == "70548"
