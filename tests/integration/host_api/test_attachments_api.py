"""Document attachments through the host API: the stored copies, the feed naming them, what
became of each on every surface, and disconnect-and-erase taking them along."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import aiohttp
import orjson
from sqlalchemy import func, select

from syncsvc.db.models.attachments import Attachment, AttachmentBlob, AttachmentSource
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.settings import Settings
from syncsvc.web.handlers.attachments_api import ATTACHMENT_EXTENSION
from syncsvc.web.keys import SERVICES
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.cli.runner import syncsvc
from tests.integration.host_api.conftest import NANCY, connect, read_all
from tests.integration.web.flows import Flow, sync_now
from tests.integration.web.service import RunningService

JSON = {"Content-Type": "application/json"}
DOCUMENT_TYPES = ("Patient", "DocumentReference", "DiagnosticReport")
NOTE = b"<html><body><script>alert(document.cookie)</script><p>Visit note</p></body></html>"


async def _admin(
    http: aiohttp.ClientSession, sandbox: RunningSandbox, method: str, path: str, body: Any
) -> None:
    url = f"{sandbox.origin}/admin/tenants/{GENERIC_TENANT}/{path}"
    async with http.request(method, url, data=orjson.dumps(body), headers=JSON) as response:
        assert response.status < 300, await response.read()


async def _documents(http: aiohttp.ClientSession, sandbox: RunningSandbox) -> None:
    """An HTML note, and a document pointing outside the tenant's FHIR base."""
    base = sandbox.urls(GENERIC_TENANT).fhir_base
    await _admin(
        http,
        sandbox,
        "PUT",
        "binaries/html-note",
        {"patient": NANCY, "contentType": "text/html", "data": base64.b64encode(NOTE).decode()},
    )
    for rid, url in (("html-1", f"{base}/Binary/html-note"), ("away-1", "https://evil.example/x")):
        await _admin(
            http,
            sandbox,
            "POST",
            f"patients/{NANCY}/DocumentReference",
            {
                "resourceType": "DocumentReference",
                "id": rid,
                "status": "current",
                "content": [
                    {"attachment": {"contentType": "text/html", "url": url, "title": "Visit note"}}
                ],
            },
        )


async def _documents_tenant(flow: Flow) -> str:
    await flow.register(GENERIC_TENANT, name="generic", resource_types=DOCUMENT_TYPES)
    return "generic"


async def _get_json(api: aiohttp.ClientSession, path: str) -> Any:
    async with api.get(path) as response:
        assert response.status == 200, await response.read()
        return await response.json()


async def test_stored_copies_are_served_and_named_by_the_feed(
    service: RunningService,
    api: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    settings: Settings,
    flow: Flow,
) -> None:
    await _documents(http, sandbox)
    generic = await _documents_tenant(flow)
    connection_id = await connect(api, "user-a", "nancysmart", generic)
    await sync_now(service)

    listed = await _get_json(api, f"/api/v1/connections/{connection_id}/attachments")
    items = {
        (i["resource_type"], i["resource_id"], i["position"]): i for i in listed["attachments"]
    }
    html = items[("DocumentReference", "html-1", 0)]
    assert html["status"] == "stored"
    assert html["content_type"] == "text/html"
    assert html["sha256"] == hashlib.sha256(NOTE).hexdigest()
    away = items[("DocumentReference", "away-1", 0)]
    assert (away["status"], away["reason"], away["content_url"]) == (
        "refused",
        "outside_base",
        None,
    )
    stored = [i for i in listed["attachments"] if i["status"] == "stored"]
    assert len(stored) == len(listed["attachments"]) - 1

    # The copy: its stored type, as a download, never sniffed, never run in the host's origin.
    async with api.get(html["content_url"]) as response:
        assert response.status == 200
        assert await response.read() == NOTE
        assert response.headers["Content-Type"] == "text/html"
        assert response.headers["Content-Disposition"] == 'attachment; filename="Visit-note.html"'
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        policy = response.headers["Content-Security-Policy"]
        assert "sandbox" in policy
        assert "default-src 'none'" in policy
        assert response.headers["Cache-Control"] == "no-store"
        etag = response.headers["ETag"]
    async with api.get(html["content_url"], headers={"If-None-Match": etag}) as response:
        assert response.status == 304
    for item in stored:
        async with api.get(item["content_url"]) as response:
            body = await response.read()
            assert response.status == 200
            assert hashlib.sha256(body).hexdigest() == item["sha256"]
            assert len(body) == item["size"]
            assert response.headers["Content-Type"] == item["content_type"]

    # The feed names each attachment's copy beside the resource, which stays as synced.
    resources_path = f"/api/v1/connections/{connection_id}/resources"
    async with api.get(
        resources_path, params={"type": "DocumentReference", "limit": 1000}
    ) as response:
        bundle = orjson.loads(await response.read())
    entries = {e["resource"]["id"]: e for e in bundle["entry"]}
    [named] = [x for x in entries["html-1"]["extension"] if x["url"] == ATTACHMENT_EXTENSION]
    parts = {
        p["url"]: next(v for k, v in p.items() if k.startswith("value")) for p in named["extension"]
    }
    assert parts["status"] == "stored"
    assert parts["content"] == service.origin + html["content_url"]
    assert parts["sha256"] == html["sha256"]
    assert "extension" not in entries["html-1"]["resource"]["content"][0]["attachment"]
    [refused] = [x for x in entries["away-1"]["extension"] if x["url"] == ATTACHMENT_EXTENSION]
    assert {"url": "reason", "valueCode": "outside_base"} in refused["extension"]

    # The connection, the listing and the operator's CLI say the same thing about it.
    view = await _get_json(api, f"/api/v1/connections/{connection_id}")
    summary = view["attachments"]
    assert summary["refused"] == 1
    assert summary["reasons"] == {"refused": {"outside_base": 1}}
    assert summary["stored"] == len(stored)
    assert summary["sentence"] == listed["summary"]["sentence"]
    assert "pointing outside this provider's FHIR server" in summary["sentence"]
    shown = await syncsvc(settings, "connections", "show", connection_id)
    assert shown.code == 0, shown.stderr
    assert f"attachments     {summary['sentence']}" in shown.stdout
    as_json = await syncsvc(settings, "connections", "show", connection_id, "--json")
    assert as_json.json()["attachments"] == {k: v for k, v in summary.items() if k != "url"}  # type: ignore[index]


async def test_attachments_belong_to_their_connection_and_its_user_only(
    service: RunningService,
    api: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    flow: Flow,
) -> None:
    await _documents(http, sandbox)
    generic = await _documents_tenant(flow)
    mine = await connect(api, "user-a", "nancysmart", generic)
    theirs = await connect(api, "user-b", "wilmasmart", generic)
    await sync_now(service)
    listed = await _get_json(api, f"/api/v1/connections/{mine}/attachments")
    url = next(i["content_url"] for i in listed["attachments"] if i["content_url"])

    async with api.get(url, params={"user_id": "user-b"}) as response:
        assert response.status == 404
    async with api.get(url.replace(mine, theirs)) as response:
        assert response.status == 404
    async with (
        aiohttp.ClientSession(base_url=service.origin) as anonymous,
        anonymous.get(url) as response,
    ):
        assert response.status == 401
    async with api.get(url, params={"user_id": "user-a"}) as response:
        assert response.status == 200


async def test_disconnect_and_erase_removes_the_attachments(
    service: RunningService,
    api: aiohttp.ClientSession,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    flow: Flow,
) -> None:
    await _documents(http, sandbox)
    generic = await _documents_tenant(flow)
    connection_id = await connect(api, "user-a", "nancysmart", generic)
    kept_id = await connect(api, "user-b", "wilmasmart", generic)
    await sync_now(service)
    listed = await _get_json(api, f"/api/v1/connections/{connection_id}/attachments")
    url = next(i["content_url"] for i in listed["attachments"] if i["content_url"])

    async def rows(cid: str) -> list[int]:
        async with service.app[SERVICES].sessionmaker() as session:
            return [
                int(
                    await session.scalar(
                        select(func.count()).select_from(model).where(model.connection_id == cid)
                    )
                    or 0
                )
                for model in (Attachment, AttachmentBlob, AttachmentSource)
            ]

    assert all(await rows(connection_id))
    before_other = await rows(kept_id)
    assert all(before_other)

    async with api.delete(f"/api/v1/connections/{connection_id}") as response:
        assert response.status == 204

    assert await rows(connection_id) == [0, 0, 0]
    assert await rows(kept_id) == before_other
    async with api.get(url) as response:
        assert response.status == 404
    view = await _get_json(api, f"/api/v1/connections/{connection_id}")
    assert view["attachments"]["stored"] == 0
    resources, _, _ = await read_all(api, f"/api/v1/connections/{connection_id}/resources")
    assert resources == []
