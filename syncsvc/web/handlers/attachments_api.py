"""The host-application API of document attachments: what became of each, and the stored copies.

``GET /api/v1/connections/{id}/attachments`` lists every attachment of the connection's
DocumentReference and DiagnosticReport resources with its state (stored, skipped, refused,
failed), reason and, when stored, the URL of the copy. ``GET .../attachments/{type}/{resource
id}/{position}`` answers that copy with the content type it was stored under, as a download
(``Content-Disposition: attachment``), with ``nosniff`` and a CSP sandbox: a document an EHR sent
never runs script in the host's origin. Both take the API key and ``?user_id=`` as the rest of
the host API does.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from typing import Any

from aiohttp import web

from syncsvc.db import attachment_repo, data_repo
from syncsvc.db.models.attachments import Attachment
from syncsvc.errors import NotFound
from syncsvc.fhir.attachments import ACTIVE_TYPES, media_type
from syncsvc.sync.attachment_words import attachment_view
from syncsvc.vocabulary import ATTACHMENT_ELEMENTS
from syncsvc.web.auth import require_api_key
from syncsvc.web.handlers.api import json_response
from syncsvc.web.keys import SERVICES

#: The policy of every stored copy served: nothing loads, nothing runs, no form submits.
CONTENT_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox"
#: The Bundle entry extension naming one attachment of the entry's resource (the feed's).
ATTACHMENT_EXTENSION = "https://syncsvc.dev/fhir/StructureDefinition/attachment"
#: Contents at least this large are decompressed off the event loop's thread.
_THREAD_ABOVE = 256 * 1024
_FILENAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_EXTENSIONS = {
    "application/pdf": "pdf",
    "text/html": "html",
    "application/xhtml+xml": "xhtml",
    "text/plain": "txt",
    "text/rtf": "rtf",
    "application/xml": "xml",
    "application/hl7-v3+xml": "xml",
    "application/cda+xml": "xml",
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/gif": "gif",
    "image/tiff": "tiff",
}


def content_path(connection_id: str, resource_type: str, resource_id: str, position: int) -> str:
    """The API path of one stored attachment."""
    return (
        f"/api/v1/connections/{connection_id}/attachments/{resource_type}/{resource_id}/{position}"
    )


def attachment_item(link: Attachment) -> dict[str, Any]:
    """One attachment as the API lists it."""
    stored = link.status == "stored"
    return {
        "resource_type": link.resource_type,
        "resource_id": link.resource_id,
        "position": link.position,
        "status": link.status,
        "reason": link.reason,
        "detail": link.detail,
        "title": link.title,
        "source_url": link.url,
        "declared_content_type": link.declared_type,
        "content_type": link.content_type,
        "size": link.size,
        "sha256": link.sha256,
        "content_url": content_path(
            link.connection_id, link.resource_type, link.resource_id, link.position
        )
        if stored
        else None,
        "updated_at": link.updated_at,
    }


async def _owned_connection(request: web.Request) -> str:
    connection_id = request.match_info["connection_id"]
    async with request.app[SERVICES].sessionmaker() as session:
        facts = await data_repo.connection_facts(session, connection_id)
    expected = request.query.get("user_id")
    if facts is None or (expected is not None and expected != facts.connection.user_id):
        raise NotFound("No such connection.", reason="connection_not_found")
    return connection_id


async def list_attachments(request: web.Request) -> web.Response:
    """``GET /api/v1/connections/{connection_id}/attachments``."""
    require_api_key(request)
    connection_id = await _owned_connection(request)
    async with request.app[SERVICES].sessionmaker() as session:
        links = await attachment_repo.attachments_of(session, connection_id)
        summary = (await attachment_repo.summaries(session, [connection_id])).get(connection_id)
    return json_response(
        {
            "connection_id": connection_id,
            "summary": attachment_view(summary),
            "attachments": [attachment_item(link) for link in links],
        }
    )


def _filename(link: Attachment, media: str | None) -> str:
    stem = _FILENAME_UNSAFE.sub("-", link.title or f"{link.resource_type}-{link.resource_id}")
    stem = stem.strip("-.")[:80] or "document"
    return f"{stem}.{_EXTENSIONS.get(media or '', 'bin')}"


async def get_attachment(request: web.Request) -> web.Response:
    """``GET /api/v1/connections/{connection_id}/attachments/{type}/{resource_id}/{position}``."""
    require_api_key(request)
    connection_id = await _owned_connection(request)
    resource_type = request.match_info["resource_type"]
    position = int(request.match_info["position"])
    if resource_type not in ATTACHMENT_ELEMENTS:
        raise NotFound("No such attachment.", reason="attachment_not_found")
    async with request.app[SERVICES].sessionmaker() as session:
        found = await attachment_repo.content_of(
            session, connection_id, resource_type, request.match_info["resource_id"], position
        )
    if found is None:
        raise NotFound("No stored copy of that attachment.", reason="attachment_not_found")
    link, blob = found
    data = blob.data
    if blob.codec == "zlib":
        data = (
            await asyncio.to_thread(zlib.decompress, data)
            if blob.size >= _THREAD_ABOVE
            else zlib.decompress(data)
        )
    media = media_type(link.content_type)
    headers = {
        "Content-Type": link.content_type or "application/octet-stream",
        "Content-Disposition": f'attachment; filename="{_filename(link, media)}"',
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": CONTENT_POLICY,
        "ETag": f'"{blob.sha256}"',
        "Cache-Control": "no-store",
    }
    if media in ACTIVE_TYPES:
        # Opened in a browser anyway, the document runs in a unique opaque origin.
        headers["Cross-Origin-Resource-Policy"] = "same-origin"
    if request.headers.get("If-None-Match") == headers["ETag"]:
        return web.Response(status=304, headers={"ETag": headers["ETag"]})
    return web.Response(body=data, headers=headers)


def attachment_extension(link: Attachment, public_url: str) -> dict[str, Any]:
    """The entry extension naming what became of one attachment of the entry's resource.

    ``position`` is the attachment's index in ``content`` (DocumentReference) or
    ``presentedForm`` (DiagnosticReport); ``content`` the URL of syncsvc's stored copy.
    """
    parts: list[dict[str, Any]] = [
        {"url": "position", "valueInteger": link.position},
        {"url": "status", "valueCode": link.status},
    ]
    if link.status == "stored":
        path = content_path(link.connection_id, link.resource_type, link.resource_id, link.position)
        parts += [
            {"url": "content", "valueUrl": public_url + path},
            {"url": "contentType", "valueCode": link.content_type},
            {"url": "size", "valueInteger": link.size},
            {"url": "sha256", "valueString": link.sha256},
        ]
    elif link.reason is not None:
        parts.append({"url": "reason", "valueCode": link.reason})
    return {"url": ATTACHMENT_EXTENSION, "extension": parts}


def setup_routes(app: web.Application) -> None:
    """Register the attachments API."""
    base = "/api/v1/connections/{connection_id}/attachments"
    app.router.add_get(base, list_attachments)
    app.router.add_get(
        base
        + "/{resource_type:[A-Z][A-Za-z]{0,63}}/{resource_id:[A-Za-z0-9.-]{1,64}}"
        + "/{position:[0-9]{1,3}}",
        get_attachment,
    )
