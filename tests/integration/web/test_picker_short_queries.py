"""The picker's cheap paths: one- and two-letter searches read a page of the name index, and the
patient's own providers are read in one query, worded as every other surface words them.

Real HTTP, a real ``tenants import``, SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import event
from yarl import URL

from syncsvc.db import repo
from syncsvc.directory.picker import connected_providers
from syncsvc.sandbox.patient import parse_forms
from syncsvc.sync.grant_states import explain_connection
from syncsvc.web.keys import SERVICES
from tests.fixtures.directory import ABBEVILLE, oracle_directory, organisations
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT
from tests.integration.cli.runner import syncsvc
from tests.integration.web.flows import Flow


async def _offered(flow: Flow, link: str, query: str, page: int = 1) -> tuple[str, list[str]]:
    url = URL(link).update_query(q=query, page=str(page))
    async with flow.http.get(url) as response:
        assert response.status == 200
        body = await response.text()
    return body, [f.fields["tenant"] for f in parse_forms(body) if "tenant" in f.fields]


async def test_one_or_two_letters_find_names_that_start_with_them(
    flow: Flow, tmp_path: Path
) -> None:
    orgs = organisations(300, abbeville_base=flow.sandbox.urls(CERNER_TENANT).fhir_base)
    bundle = tmp_path / "oracle.json"
    bundle.write_bytes(orjson.dumps(oracle_directory(orgs)))
    done = await syncsvc(
        flow.service.settings, "tenants", "import", str(bundle), "--client-id", "syncsvc-public",
        "--allow-loopback", "--directory", "oracle-health",
    )  # fmt: skip
    assert done.code == 0, done.stderr
    async with flow.service.app[SERVICES].sessionmaker() as session:
        names = {t.name: t.display_name for t in await repo.list_tenants(session)}
    link = await flow.link("user-short")

    body, found = await _offered(flow, link, "ab")
    assert found == ["abbeville-general-hospital"]
    assert "Providers whose name starts with “ab”" in body
    # One letter: names starting with it, alphabetically, 20 a page; never a city or a ZIP.
    expected = sorted(
        (n for n in names.values() if n.lower().startswith("s")), key=lambda n: n.lower()
    )
    assert len(expected) > 20
    first, page_one = await _offered(flow, link, "S")
    _, page_two = await _offered(flow, link, "s", page=2)
    assert [names[t] for t in page_one + page_two] == expected[:40]
    assert "Next page" in first
    # "Sa" is Salina's start, but only a name is matched by two letters; three search places.
    _, found = await _offered(flow, link, "sa")
    assert found == []
    _, found = await _offered(flow, link, "sal")
    assert {names[t] for t in found} == {o.name for o in orgs if o.city == "Salina"}
    # Two short words: the start of a two-word name; accents and case folded as elsewhere.
    _, found = await _offered(flow, link, "HÔ s")
    assert [names[t] for t in found] == ["Hôpital Sainte-Anne"]
    body, found = await _offered(flow, link, "qx")
    assert found == []
    assert "No provider's name starts with “qx”" in body
    assert ABBEVILLE not in body


async def test_the_patients_own_providers_are_read_in_one_query_with_their_states(
    flow: Flow,
) -> None:
    for sandbox_tenant, name in (
        (GENERIC_TENANT, "generic"),
        (CERNER_TENANT, "cerner"),
        (EPIC_TENANT, "epic"),
    ):
        await flow.register(sandbox_tenant, name=name)
        assert (await flow.connect("nancysmart", tenant=name, user_id="user-own")).status == 200
    # A second connection to one provider: it is listed once, with its newest connection.
    assert (await flow.connect("nancysmart", tenant="cerner", user_id="user-own")).status == 200
    sessionmaker = flow.service.app[SERVICES].sessionmaker
    async with sessionmaker.begin() as session:
        connections = await repo.list_connections(session, user_id="user-own")
        epic_tenant = await repo.get_tenant_by_name(session, "epic")
        assert epic_tenant is not None
        epic = next(c for c in connections if c.tenant_id == epic_tenant.id)
        await repo.set_connection_status(
            session,
            epic.id,
            status="needs_reauth",
            now=dt.datetime.now(dt.UTC),
            reason="invalid_grant",
            message="The provider no longer accepts this connection.",
        )

    statements: list[str] = []
    engine = sessionmaker.kw["bind"].sync_engine

    def count(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine, "before_cursor_execute", count)
    try:
        providers = await connected_providers(sessionmaker, "user-own")
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1

    # The same words as the status page's explanation of each provider's newest connection.
    async with sessionmaker() as session:
        connections = await repo.list_connections(session, user_id="user-own")
        expected = {}
        for connection in reversed(connections):
            tenant = await repo.get_tenant(session, connection.tenant_id)
            assert tenant is not None
            if tenant.name not in expected:
                explanation = await explain_connection(session, connection, tenant)
                expected[tenant.name] = (explanation.title, explanation.tone)
    assert [p.tenant.name for p in providers] == list(expected)
    assert {p.tenant.name: (p.title, p.tone) for p in providers} == expected
    assert expected["epic"] == ("Needs you to reconnect", "warn")
    assert expected["generic"][0] == "Connected"

    link = await flow.link("user-own")
    async with flow.http.get(link) as response:
        body = await response.text()
    own = body.split("<h2>Your providers</h2>")[1].split("</ul>")[0]
    assert own.count("Your connection: Needs you to reconnect") == 1
    assert own.count("Your connection: Connected") == 2
