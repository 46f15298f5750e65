"""The type-ahead's JSON search and script over real HTTP, on SQLite and PostgreSQL.

The JSON search answers exactly what the connect page lists for the same query (same providers,
same order, same brand groups), only for the connect link or session that authorises the page,
at a bounded rate, and never with a FHIR URL or an internal id. The script is served with its
type, ``nosniff`` and cache headers, and only the connect page's policy lets a script run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from yarl import URL

from syncsvc.sandbox.patient import parse_forms
from syncsvc.settings import Settings
from syncsvc.web.cookies import SESSION_COOKIE
from syncsvc.web.handlers.picker_api import PICKER_SCRIPT
from syncsvc.web.keys import SIGNER
from tests.fixtures.brands import multi_portal_brands_directory
from tests.fixtures.directory import ABBEVILLE, brands_directory, oracle_directory, organisations
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT
from tests.integration.cli.runner import syncsvc
from tests.integration.web.flows import Flow

#: Any FHIR base or internal id: Oracle's hosts, the sandbox's, a FHIR path, a UUID.
LEAK = re.compile(
    r"fhir-myrecord|127\.0\.0\.1:\d+/|/r4/|/fhir|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-", re.I
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A small search rate, so a test reaches it in a few requests."""
    return settings.replace(picker_search_burst=12, picker_searches_per_minute=1)


async def _import(flow: Flow, tmp_path: Path, bundle: dict[str, Any], directory: str) -> None:
    path = tmp_path / f"{directory}.json"
    path.write_bytes(orjson.dumps(bundle))
    done = await syncsvc(
        flow.service.settings, "tenants", "import", str(path), "--client-id", "syncsvc-public",
        "--allow-loopback", "--directory", directory, "--json",
    )  # fmt: skip
    assert done.code == 0, done.stderr


async def _page(flow: Flow, link: str, query: str, page: int = 1) -> tuple[str, list[str]]:
    url = URL(link).update_query(q=query, page=str(page))
    async with flow.http.get(url) as response:
        assert response.status == 200
        body = await response.text()
    return body, [f.fields["tenant"] for f in parse_forms(body) if "tenant" in f.fields]


async def _search(
    flow: Flow, session: str | None = None, **query: str
) -> tuple[int, dict[str, Any], Any]:
    url = URL(f"{flow.service.origin}/connect/search").with_query(query)
    headers = {"Accept": "application/json"}
    if session is not None:
        headers["Cookie"] = f"{SESSION_COOKIE}={session}"
    async with flow.http.get(url, headers=headers) as response:
        text = await response.text()
        assert not LEAK.search(text), LEAK.search(text)
        return response.status, orjson.loads(text), response.headers


def _offered(found: dict[str, Any]) -> list[str]:
    return [card["tenant"] for group in found["groups"] for card in group["providers"]]


async def test_the_json_search_answers_what_the_page_lists_to_its_link_only(
    flow: Flow, tmp_path: Path
) -> None:
    await flow.register(GENERIC_TENANT, name="generic")
    assert (await flow.connect("nancysmart", tenant="generic", user_id="user-ta")).status == 200
    orgs = organisations(300, abbeville_base=flow.sandbox.urls(CERNER_TENANT).fhir_base)
    await _import(flow, tmp_path, oracle_directory(orgs), "oracle-health")
    await _import(
        flow, tmp_path, brands_directory(flow.sandbox.urls(EPIC_TENANT).fhir_base), "bayou"
    )
    link = await flow.link("user-ta")
    token = URL(link).query["link"]

    for query, page in (("abbev", 1), ("salina", 1), ("salina", 2), ("s", 1), ("70510", 1),
                        ("acadiana", 1), ("generic smart", 1), ("zzyzx", 1)):  # fmt: skip
        body, listed = await _page(flow, link, query, page)
        status, found, headers = await _search(flow, link=token, q=query, page=str(page))
        assert status == 200
        assert headers["Content-Type"] == "application/json"
        assert headers["Cache-Control"] == "no-store"
        assert _offered(found) == listed, query
        assert found["count"] == len(listed)
        assert found["has_more"] == ("Next page" in body)
    _, found, _ = await _search(flow, link=token, q="abbev")
    assert found["groups"] == [
        {
            "brand": None,
            "providers": [
                {
                    "tenant": "abbeville-general-hospital",
                    "name": ABBEVILLE,
                    "label": ABBEVILLE,
                    "detail": "Abbeville, LA",
                    "status": None,
                    "logo_url": None,
                    "logo_alt": "",
                }
            ],
        }
    ]
    _, found, _ = await _search(flow, link=token, q="generic smart")
    assert found["groups"][0]["providers"][0]["status"] == {"title": "Connected", "tone": "ok"}
    _, found, _ = await _search(flow, link=token, q="a" * 500)
    assert found["query"] == "a" * 200

    # Without the link or a session: 401; a forged link or one for one provider: 403.
    status, problem, headers = await _search(flow, q="abbev")
    assert (status, problem["reason"]) == (401, "session_missing")
    assert headers["Content-Type"] == "application/problem+json"
    status, problem, _ = await _search(flow, link=token[:-4] + "AAAA", q="abbev")
    assert (status, problem["reason"]) == (403, "link_invalid")
    one = await flow.link("user-ta", tenant="generic")
    status, problem, _ = await _search(flow, link=URL(one).query["link"], q="abbev")
    assert (status, problem["reason"]) == (403, "link_for_one_provider")

    # The patient session a used link starts authorises the search as the link did.
    signer = flow.service.app[SIGNER]
    session = signer.sign("patient-session", {"uid": "user-ta", "tnt": None})
    status, found, _ = await _search(flow, session=session, q="generic smart")
    assert status == 200
    assert _offered(found) == ["generic"]
    assert found["groups"][0]["providers"][0]["status"] == {"title": "Connected", "tone": "ok"}
    one_provider = signer.sign("patient-session", {"uid": "user-ta", "tnt": "generic"})
    status, problem, _ = await _search(flow, session=one_provider, q="abbev")
    assert (status, problem["reason"]) == (403, "link_for_one_provider")
    status, problem, _ = await _search(flow, session=session[:-4] + "AAAA", q="abbev")
    assert (status, problem["reason"]) == (401, "session_missing")

    # Each link has its own rate (12 at once here, 11 used above): searching on is refused.
    answers = [await _search(flow, link=token, q="abbev") for _ in range(4)]
    assert answers[0][0] == 200
    refused = [answer for answer in answers if answer[0] == 429]
    assert refused, [answer[0] for answer in answers]
    _, problem, headers = refused[0]
    assert problem["reason"] == "too_many_searches"
    assert int(headers["Retry-After"]) >= 1
    status, _, _ = await _search(flow, link=URL(await flow.link("user-ta")).query["link"], q="ab")
    assert status == 200


async def test_a_brand_is_shown_once_with_its_portals_beneath(flow: Flow, tmp_path: Path) -> None:
    bases = {
        name: flow.sandbox.urls(tenant).fhir_base
        for name, tenant in (
            ("main", EPIC_TENANT),
            ("kids", CERNER_TENANT),
            ("clinic", GENERIC_TENANT),
        )
    }
    await _import(flow, tmp_path, multi_portal_brands_directory(bases), "gulf")
    link = await flow.link("user-brand")
    token = URL(link).query["link"]

    body, listed = await _page(flow, link, "gulf coast")
    _, found, _ = await _search(flow, link=token, q="gulf coast")
    assert _offered(found) == listed
    [group] = [g for g in found["groups"] if g["brand"] == "Gulf Coast Health"]
    labels = sorted(card["label"] for card in group["providers"])
    assert labels == ["Gulf Coast Kids Portal", "Gulf Coast MyChart", "Gulf Coast Pointe Clinic"]
    assert body.count(">Gulf Coast Health</h3>") == 1
    for label in labels:
        assert f"Connect to {label}</button>" in body
    # An alias of the affiliate finds it under its brand.
    _, found, _ = await _search(flow, link=token, q="pointe")
    assert found["groups"][0]["providers"][0]["label"] == "Gulf Coast Pointe Clinic"


async def test_the_script_is_served_with_its_type_and_cache_headers_under_the_page_policy(
    flow: Flow,
) -> None:
    origin = flow.service.origin
    async with flow.http.get(f"{origin}{PICKER_SCRIPT.url}") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        etag = response.headers["ETag"]
        assert await response.read() == PICKER_SCRIPT.body
    async with flow.http.get(f"{origin}/static/picker.js") as response:
        assert response.headers["Cache-Control"] == "no-cache"
    async with flow.http.get(
        f"{origin}/static/picker.js", headers={"If-None-Match": etag}
    ) as response:
        assert response.status == 304
    async with flow.http.get(f"{origin}/static/other.js") as response:
        assert response.status == 404

    async with flow.http.get(await flow.link("user-csp")) as response:
        page = await response.text()
        policy = response.headers["Content-Security-Policy"]
    assert f'<script src="{PICKER_SCRIPT.url}" defer></script>' in page
    assert "<script>" not in page
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["default-src"] == "'none'"
    # Every other page keeps the policy that runs no script at all.
    async with flow.http.get(f"{origin}/connect") as response:
        other = response.headers["Content-Security-Policy"]
    assert "script-src" not in other
    assert "connect-src" not in other
    assert "default-src 'none'" in other
