"""Attachments of clinical documents over real HTTP: each vendor's Binary, inline data, dedupe,
incremental fetches, caps and content types, and URLs outside the base (the token never leaves)."""

from __future__ import annotations

import base64
import hashlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from syncsvc.fhir.attachments import attachments_of
from syncsvc.fhir.page_limits import MIB
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.sync.context import SyncContext
from syncsvc.sync.pull import pull_connection
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT

from . import NANCY, SandboxAdmin, stored
from .attachments import connected, stored_attachments

DECLARED = {
    CERNER_TENANT: {"application/pdf", "text/html"},
    EPIC_TENANT: {"text/html", "text/rtf"},
    GENERIC_TENANT: {"text/plain"},
}


def _binary_requests(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in log if "/Binary/" in e["url"]]


@pytest.mark.parametrize("sandbox_tenant", [CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT])
async def test_each_vendors_documents_are_stored_as_it_serves_them(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin, sandbox_tenant: str
) -> None:
    tokens = await connected(ctx, sandbox, sandbox_tenant)
    since = len(await admin.requests())

    summary = await pull_connection(ctx, tokens.connection.id, tokens)

    assert summary.outcome == "ok"
    saved = await stored_attachments(ctx, tokens.connection.id)
    resources = await stored(ctx, tokens.connection.id)
    expected = {
        (rtype, rid, ref.position): ref
        for (rtype, rid), row in resources.items()
        if rtype in ("DocumentReference", "DiagnosticReport")
        for ref in attachments_of(rtype, orjson.loads(row.body))
    }
    assert expected
    assert {(a.resource_type, a.resource_id, a.position) for a in saved.links} == set(expected)
    assert {a.status for a in saved.links} == {"stored"}
    for link in saved.links:
        ref = expected[(link.resource_type, link.resource_id, link.position)]
        content = saved.content(link)
        assert link.content_type == ref.content_type
        assert link.size == ref.size == len(content)
        assert link.sha256 == hashlib.sha256(content).hexdigest()
        if ref.data is not None:
            assert content == base64.b64decode(ref.data)
        if link.content_type == "application/pdf":
            assert content.startswith(b"%PDF-")
    linked = [ref for ref in expected.values() if ref.url is not None]
    assert {ref.content_type for ref in linked} == DECLARED[sandbox_tenant]
    if sandbox_tenant == EPIC_TENANT:
        assert all(ref.url is not None and ref.url.startswith("Binary/") for ref in linked)
    # One request per linked attachment, each answered 200: Cerner and Epic refuse (406) a
    # Binary read whose Accept is not the attachment's type.
    binaries = _binary_requests((await admin.requests())[since:])
    assert len(binaries) == len(linked)
    assert {e["status"] for e in binaries} == {200}
    assert summary.attachments is not None
    assert summary.attachments["stored"] == len(expected)
    base = sandbox.urls(sandbox_tenant).fhir_base
    assert all(e["url"].startswith(f"{base}/Binary/") for e in binaries)


async def test_a_binary_sent_as_a_fhir_resource_is_unwrapped(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin
) -> None:
    await admin.call("PATCH", f"tenants/{CERNER_TENANT}/policy", {"binary_as_resource": True})
    tokens = await connected(ctx, sandbox, CERNER_TENANT)

    await pull_connection(ctx, tokens.connection.id, tokens)

    saved = await stored_attachments(ctx, tokens.connection.id)
    assert saved.links
    assert {a.status for a in saved.links} == {"stored"}
    pdfs = [a for a in saved.links if a.content_type == "application/pdf"]
    assert pdfs
    assert all(saved.content(a).startswith(b"%PDF-") for a in pdfs)


async def _document(
    admin: SandboxAdmin, tenant: str, attachments: list[dict[str, Any]], rid: str
) -> dict[str, Any]:
    body = {
        "resourceType": "DocumentReference",
        "id": rid,
        "status": "current",
        "content": [{"attachment": a} for a in attachments],
    }
    added: dict[str, Any] = await admin.call(
        "POST", f"tenants/{tenant}/patients/{NANCY}/DocumentReference", body
    )
    return added


async def _binary(
    admin: SandboxAdmin,
    tenant: str,
    bid: str,
    content: bytes,
    content_type: str,
    served_as: str | None = None,
) -> None:
    await admin.call(
        "PUT",
        f"tenants/{tenant}/binaries/{bid}",
        {
            "patient": NANCY,
            "contentType": content_type,
            "data": base64.b64encode(content).decode(),
            "servedAs": served_as,
        },
    )


async def test_only_new_or_changed_attachments_are_fetched_again(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin
) -> None:
    tokens = await connected(ctx, sandbox, CERNER_TENANT)
    await pull_connection(ctx, tokens.connection.id, tokens)
    first = await stored_attachments(ctx, tokens.connection.id)
    since = len(await admin.requests())

    again = await pull_connection(ctx, tokens.connection.id, tokens)

    assert not _binary_requests((await admin.requests())[since:])
    assert again.attachments is not None
    assert again.attachments["stored"] == 0
    # A new version of one document: only its attachments are fetched again.
    document = next(a for a in first.links if a.resource_type == "DocumentReference")
    path = f"tenants/{CERNER_TENANT}/patients/{NANCY}/DocumentReference/{document.resource_id}"
    await admin.call("PATCH", path, {"description": "amended"})
    since = len(await admin.requests())

    await pull_connection(ctx, tokens.connection.id, tokens)

    refetched = _binary_requests((await admin.requests())[since:])
    mine = [a for a in first.links if a.resource_id == document.resource_id]
    assert len(refetched) == len(mine) == 2
    after = await stored_attachments(ctx, tokens.connection.id)
    assert [(a.sha256, a.status) for a in after.links] == [
        (a.sha256, a.status) for a in first.links
    ]
    assert after.contents == first.contents
    # A document that is gone takes its attachments (and contents no other uses) with it.
    await admin.call("DELETE", path)

    await pull_connection(ctx, tokens.connection.id, tokens, full=True)

    gone = await stored_attachments(ctx, tokens.connection.id)
    assert document.resource_id not in {a.resource_id for a in gone.links}
    assert set(gone.contents) == {a.sha256 for a in gone.links}
    assert len(gone.contents) == len(first.contents) - len(mine)


async def test_the_same_content_is_stored_once_per_connection(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin
) -> None:
    note = b"Same note, filed twice.\n"
    base = sandbox.urls(GENERIC_TENANT).fhir_base
    await _binary(admin, GENERIC_TENANT, "dup-a", note, "text/plain")
    await _binary(admin, GENERIC_TENANT, "dup-b", note, "text/plain")
    linked = {"contentType": "text/plain", "url": f"{base}/Binary/dup-a"}
    await _document(admin, GENERIC_TENANT, [linked], "twice-1")
    await _document(admin, GENERIC_TENANT, [linked, {**linked, "url": "Binary/dup-b"}], "twice-2")
    inline = {"contentType": "text/plain", "data": base64.b64encode(note).decode()}
    await _document(admin, GENERIC_TENANT, [inline], "twice-3")
    nancy = await connected(ctx, sandbox, GENERIC_TENANT)
    wilma = await connected(ctx, sandbox, GENERIC_TENANT, patient="12742400", user_id="user-2")

    await pull_connection(ctx, nancy.connection.id, nancy)
    await pull_connection(ctx, wilma.connection.id, wilma)

    saved = await stored_attachments(ctx, nancy.connection.id)
    digest = hashlib.sha256(note).hexdigest()
    same = [a for a in saved.links if a.resource_id.startswith("twice-")]
    assert len(same) == 4
    assert {(a.status, a.sha256) for a in same} == {("stored", digest)}
    assert saved.contents[digest] == note
    assert len(saved.contents) == len({a.sha256 for a in saved.links})
    # Another connection never shares a content row with this one.
    other = await stored_attachments(ctx, wilma.connection.id)
    assert digest not in other.contents
    assert not {a.resource_id for a in other.links} & {a.resource_id for a in saved.links}


@pytest.fixture
async def foreign_server() -> AsyncIterator[tuple[str, list[str]]]:
    """Another loopback server that records the Authorization header of every request."""
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.Response(body=b"stolen", content_type="text/plain")

    app = web.Application()
    app.router.add_get("/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_an_attachment_outside_the_base_is_refused_and_never_gets_the_token(
    ctx: SyncContext,
    sandbox: RunningSandbox,
    admin: SandboxAdmin,
    foreign_server: tuple[str, list[str]],
) -> None:
    origin, seen = foreign_server
    base = sandbox.urls(GENERIC_TENANT).fhir_base
    other_tenant = sandbox.urls(CERNER_TENANT).fhir_base
    hostile = [
        f"{origin}/Binary/steal",  # another server
        f"{other_tenant}/Binary/steal",  # this EHR's host, another tenant's path
        f"{base}/../../r4/Binary/steal",  # dot segments out of the base
        "Binary/%2e%2e/%2e%2e/steal",  # relative, encoded dot segments
        f"{base}x/Binary/steal",  # a sibling path that merely starts with the base
        f"http://user:pw@{base.removeprefix('http://')}/Binary/steal",  # credentials in the URL
    ]
    await _document(
        admin,
        GENERIC_TENANT,
        [{"contentType": "text/plain", "url": url} for url in hostile],
        "hostile-1",
    )
    tokens = await connected(ctx, sandbox, GENERIC_TENANT)
    since = len(await admin.requests())

    summary = await pull_connection(ctx, tokens.connection.id, tokens)

    assert summary.outcome == "ok"
    assert summary.types["DocumentReference"].status == "ok"
    assert seen == []
    saved = await stored_attachments(ctx, tokens.connection.id)
    refused = [a for a in saved.links if a.resource_id == "hostile-1"]
    assert [(a.status, a.reason) for a in refused] == [("refused", "outside_base")] * len(hostile)
    assert all(a.url in hostile for a in refused)
    assert all(a.sha256 is None for a in refused)
    sent = (await admin.requests())[since:]
    assert not [e for e in sent if "steal" in e["url"]]
    # The rest of the record's documents are stored all the same.
    assert saved.by_status("stored")


async def test_caps_content_types_and_what_was_served_decide_what_is_kept(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin
) -> None:
    capped = SyncContext(
        ctx.settings.replace(max_attachment_bytes=4096, max_connection_attachment_bytes=10_000),
        ctx.sessionmaker,
        ctx.vault,
        ctx.http,
    )
    base = sandbox.urls(GENERIC_TENANT).fhir_base
    await _binary(admin, GENERIC_TENANT, "big", b"x" * 6000, "text/plain")
    await _binary(admin, GENERIC_TENANT, "zip", b"PK\x03\x04", "application/zip")
    await _binary(admin, GENERIC_TENANT, "lying", b"<script>1</script>", "text/plain", "text/html")
    fill = [(f"fill-{n}", bytes([65 + n]) * 3000) for n in range(5)]
    for bid, content in fill:
        await _binary(admin, GENERIC_TENANT, bid, content, "text/plain")

    def link(bid: str, kind: str = "text/plain", **extra: Any) -> dict[str, Any]:
        return {"contentType": kind, "url": f"{base}/Binary/{bid}", **extra}

    await _document(
        admin,
        GENERIC_TENANT,
        [
            link("big"),  # over the cap per attachment, found while reading
            link("big", size=6000),  # declared over it: not even requested
            link("zip", "application/zip"),  # a type outside the allow-list: not requested
            link("lying"),  # declared text/plain, served as text/html
        ],
        "capped-1",
    )
    await _document(admin, GENERIC_TENANT, [link(bid) for bid, _ in fill], "capped-2")
    tokens = await connected(capped, sandbox, GENERIC_TENANT)
    since = len(await admin.requests())

    summary = await pull_connection(capped, tokens.connection.id, tokens)

    assert summary.outcome == "ok"
    assert summary.types["DocumentReference"].status == "ok"
    saved = await stored_attachments(capped, tokens.connection.id)
    first = [(a.status, a.reason) for a in saved.links if a.resource_id == "capped-1"]
    assert first == [
        ("skipped", "too_large"),
        ("skipped", "too_large"),
        ("skipped", "type_not_allowed"),
        ("skipped", "type_mismatch"),
    ]
    sent = [e["url"] for e in _binary_requests((await admin.requests())[since:])]
    assert sent.count(f"{base}/Binary/big") == 1
    assert f"{base}/Binary/zip" not in sent
    # The connection's total: what fits is stored, the rest waits, whatever the order.
    filled = [a for a in saved.links if a.resource_id == "capped-2"]
    kept = sum(a.size or 0 for a in saved.by_status("stored"))
    assert kept <= 10_000
    assert {(a.status, a.reason) for a in filled} <= {
        ("stored", None),
        ("skipped", "connection_cap"),
    }
    assert ("skipped", "connection_cap") in {(a.status, a.reason) for a in filled}
    assert all(a.detail for a in saved.links if a.status != "stored")


async def test_a_streamed_binary_over_the_cap_is_dropped_while_read(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin
) -> None:
    capped = SyncContext(
        ctx.settings.replace(
            max_attachment_bytes=MIB, max_page_bytes=MIB, page_budget_bytes=4 * MIB
        ),
        ctx.sessionmaker,
        ctx.vault,
        ctx.http,
    )
    tokens = await connected(capped, sandbox, GENERIC_TENANT)
    # Every Binary answers 40 MiB of chunked JSON, with no Content-Length to refuse it by.
    await admin.faults(
        GENERIC_TENANT, [{"kind": "oversized_page", "target": "Binary", "size_bytes": 40 * MIB}]
    )

    summary = await pull_connection(capped, tokens.connection.id, tokens)

    assert summary.outcome == "ok"
    saved = await stored_attachments(capped, tokens.connection.id)
    linked = [a for a in saved.links if a.url is not None]
    assert linked
    assert {(a.status, a.reason) for a in linked} == {("skipped", "too_large")}
    # Read up to the cap (base64 JSON may be a third larger) and dropped: never 40 MiB.
    assert 0 < capped.page_budget.peak <= 4 * MIB
    assert summary.bytes_received < 2 * MIB * len(linked)
    assert capped.page_budget.in_flight == 0


async def test_a_grant_without_binary_fetches_nothing_and_says_so(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin
) -> None:
    await admin.call(
        "PATCH",
        f"tenants/{CERNER_TENANT}/policy",
        {"missing_scopes": ["patient/Binary.read", "patient/Binary.rs"]},
    )
    tokens = await connected(ctx, sandbox, CERNER_TENANT)
    since = len(await admin.requests())

    summary = await pull_connection(ctx, tokens.connection.id, tokens)

    assert summary.outcome == "ok"
    assert not _binary_requests((await admin.requests())[since:])
    saved = await stored_attachments(ctx, tokens.connection.id)
    assert saved.links
    assert {(a.status, a.reason) for a in saved.links} == {("skipped", "not_granted")}


async def test_a_failed_fetch_is_tried_again_at_the_next_sync(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin
) -> None:
    tokens = await connected(ctx, sandbox, EPIC_TENANT)
    await admin.faults(EPIC_TENANT, [{"kind": "bad_request_diagnostics", "target": "Binary"}])

    first = await pull_connection(ctx, tokens.connection.id, tokens)

    assert first.outcome == "ok"
    failed = await stored_attachments(ctx, tokens.connection.id)
    assert failed.links
    assert {(a.status, a.reason) for a in failed.links} == {("failed", "http_error")}
    await admin.faults(EPIC_TENANT, [])

    await pull_connection(ctx, tokens.connection.id, tokens)

    saved = await stored_attachments(ctx, tokens.connection.id)
    assert {a.status for a in saved.links} == {"stored"}
    assert len(saved.links) == len(failed.links)
