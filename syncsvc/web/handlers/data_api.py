"""The host-application data API: a user's connections, sync now, and the resource change feed.

Resources come out as a change feed ordered by connection id, then ``seq`` (which grows on every
insert, change and deletion within a connection). ``since`` takes the opaque cursor a previous
page returned (see :mod:`syncsvc.web.cursors`) and yields what changed or was deleted after it.

Output is a FHIR ``searchset`` Bundle (default, ``application/fhir+json``) or NDJSON
(``application/x-ndjson``: one resource per line), chosen by ``?format=bundle|ndjson`` or else
by ``Accept``. Live resources are the stored bytes exactly as synced. A deleted resource is a
*tombstone*: ``{"resourceType", "id", "meta": {"lastUpdated": <when syncsvc saw it go>,
"extension": [{"url": DELETED_EXTENSION, "valueCode": "vanished" | "entered-in-error"}]}}``, so
both formats carry deletions and a searchset Bundle stays valid (every entry has a resource;
``request``/``response`` are only allowed in history and transaction Bundles). Bundle entries
name their source with ``fullUrl`` (the resource's URL at its EHR) and a
``CONNECTION_EXTENSION`` entry extension; the entry of a DocumentReference or DiagnosticReport
also carries one attachment extension per attachment (``attachments_api``): its position, its
state and, when stored, the URL of syncsvc's copy (NDJSON readers list them at
``/attachments``).

Every response carries the resume cursor in ``X-Next-Cursor`` (and in the Bundle's
``meta.extension``) and ``X-Has-More``; when more is available now, also ``Link: rel="next"``
and a Bundle ``next`` link. Responses are streamed: the page's seq ranges are planned first
(cheap, seqs only), then bodies are read in small batches, each in its own short session.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
import structlog
from aiohttp import web

from syncsvc.db import attachment_repo, data_repo
from syncsvc.db.data_repo import ChangedRow, ConnectionFacts
from syncsvc.db.models.attachments import Attachment
from syncsvc.errors import BadRequest, Conflict, NotFound
from syncsvc.smart.scopes import explain_trimmed, grant_report
from syncsvc.sync.attachment_words import attachment_view
from syncsvc.sync.explain import explain
from syncsvc.sync.grant_states import grant_facts
from syncsvc.sync.type_words import type_sentence
from syncsvc.vocabulary import ATTACHMENT_ELEMENTS
from syncsvc.web.auth import require_api_key
from syncsvc.web.cursors import (
    CursorCodec,
    FeedCursor,
    connection_scope,
    normalise_types,
    user_scope,
)
from syncsvc.web.handlers.api import json_response
from syncsvc.web.handlers.attachments_api import attachment_extension
from syncsvc.web.keys import SERVICES, SETTINGS

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_TYPES = 50
#: Bodies read per query while streaming a page.
STREAM_BATCH = 200
MAX_USER_ID_LENGTH = 255
FHIR_JSON = "application/fhir+json"
NDJSON = "application/x-ndjson"
_NDJSON_TYPES = ("application/x-ndjson", "application/fhir+ndjson", "application/ndjson")
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")

DELETED_EXTENSION = "https://syncsvc.dev/fhir/StructureDefinition/deleted"
CONNECTION_EXTENSION = "https://syncsvc.dev/fhir/StructureDefinition/connection"
CURSOR_EXTENSION = "https://syncsvc.dev/fhir/StructureDefinition/next-cursor"

log = structlog.get_logger("syncsvc.web.data_api")


# --- connections ------------------------------------------------------------------------------


def connection_view(facts: ConnectionFacts) -> dict[str, Any]:
    """The API representation of one connection (no tokens, no patient data beyond its id)."""
    connection = facts.connection
    report = grant_report(
        connection.requested_scopes,
        connection.granted_scopes,
        has_refresh_token=facts.has_refresh_token,
    )
    trimmed = [
        {"scope": scope, "explanation": sentence}
        for scope, sentence in zip(report.trimmed, explain_trimmed(report), strict=True)
    ]
    grant = grant_facts(
        connection,
        facts.tenant,
        has_refresh_token=facts.has_refresh_token,
        access_expires_at=facts.access_expires_at,
        states=facts.states,
        counts=facts.resource_counts,
        references=facts.references,
    )
    explanation = explain(grant)
    types = []
    for line in explanation.types:
        state = facts.states.get(line.type)
        types.append(
            {
                "type": line.type,
                "granted": line.granted,
                "status": line.state,
                "resources": line.resources,
                "last_success_at": line.last_success_at,
                "error_class": state.error_class if state else None,
                "next_attempt_at": state.next_attempt_at if state else None,
                "explanation": type_sentence(state),
                "sentence": line.sentence,
                "parts": None if line.parts is None else list(line.parts),
                "shared": line.shared,
                "unsearchable": list(line.unsearchable),
            }
        )
    return {
        "id": connection.id,
        "user_id": connection.user_id,
        "tenant": {"name": facts.tenant_name, "display_name": facts.tenant_display_name},
        "patient_id": connection.patient_id,
        "status": connection.status,
        "status_reason": connection.status_reason,
        "status_message": connection.status_message,
        "explanation": explanation.to_json(),
        "error_uri": connection.error_uri,
        "scopes": {
            "requested": list(report.requested),
            "granted": list(report.granted),
            "trimmed": trimmed,
            "offline_access": report.offline,
            "ignored": list(report.malformed),
        },
        "synced_types": [line.type for line in explanation.types if line.granted],
        "types": types,
        "resource_counts": dict(facts.resource_counts),
        "references": None
        if grant.references is None
        else grant.references.to_json() | {"sentence": explanation.references},
        "attachments": {
            **attachment_view(facts.attachments),
            "url": f"/api/v1/connections/{connection.id}/attachments",
        },
        "connected_at": connection.connected_at,
        "last_sync_at": connection.last_sync_at,
        "last_success_at": connection.last_success_at,
        "next_sync_at": connection.next_sync_at,
    }


def _user_id(request: web.Request) -> str:
    user_id = request.match_info["user_id"]
    if not user_id or len(user_id) > MAX_USER_ID_LENGTH:
        raise BadRequest("user_id must be 1 to 255 characters.", reason="invalid_user_id")
    return user_id


def _not_found() -> NotFound:
    return NotFound("No such connection.", reason="connection_not_found")


def _check_owner(request: web.Request, facts_user_id: str) -> None:
    # ``?user_id=`` lets a host application make the service check ownership for it.
    expected = request.query.get("user_id")
    if expected is not None and expected != facts_user_id:
        raise _not_found()


async def list_user_connections(request: web.Request) -> web.Response:
    """``GET /api/v1/users/{user_id}/connections``."""
    require_api_key(request)
    user_id = _user_id(request)
    async with request.app[SERVICES].sessionmaker() as session:
        facts = await data_repo.user_connections(session, user_id)
    return json_response(
        {"user_id": user_id, "connections": [connection_view(item) for item in facts]}
    )


async def get_connection(request: web.Request) -> web.Response:
    """``GET /api/v1/connections/{connection_id}``."""
    require_api_key(request)
    async with request.app[SERVICES].sessionmaker() as session:
        facts = await data_repo.connection_facts(session, request.match_info["connection_id"])
    if facts is None:
        raise _not_found()
    _check_owner(request, facts.connection.user_id)
    return json_response(connection_view(facts))


async def sync_connection(request: web.Request) -> web.Response:
    """``POST /api/v1/connections/{connection_id}/sync``: make an active connection due now."""
    require_api_key(request)
    now = dt.datetime.now(dt.UTC)
    async with request.app[SERVICES].sessionmaker.begin() as session:
        facts = await data_repo.connection_facts(session, request.match_info["connection_id"])
        if facts is None:
            raise _not_found()
        _check_owner(request, facts.connection.user_id)
        connection = facts.connection
        if connection.status != "active" or not await data_repo.request_sync_now(
            session, connection.id, now=now
        ):
            raise Conflict(
                f"This connection is '{connection.status}', not active, so it cannot sync. "
                "The patient must reconnect (or the operator must fix the tenant) first.",
                reason="connection_not_active",
            )
    return json_response({"id": connection.id, "status": "active", "next_sync_at": now}, status=202)


# --- the resource feed ------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedQuery:
    """The validated parameters of one feed request."""

    scope: str
    types: tuple[str, ...]
    positions: dict[str, int]
    limit: int
    ndjson: bool


@dataclass(frozen=True)
class PagePlan:
    """Which seq range of which connection one page returns, and where the next one starts."""

    ranges: list[tuple[str, int, int]]
    positions: dict[str, int]
    has_more: bool


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}.", reason="invalid_limit")
    return int(raw)


def _types(request: web.Request) -> tuple[str, ...]:
    names = [
        name.strip() for value in request.query.getall("type", []) for name in value.split(",")
    ]
    if len(names) > MAX_TYPES or not all(_RESOURCE_TYPE.fullmatch(name) for name in names):
        raise BadRequest(
            "type must be FHIR resource type names (repeat it or separate them with commas).",
            reason="invalid_type",
        )
    return normalise_types(names)


def _wants_ndjson(request: web.Request) -> bool:
    chosen = request.query.get("format")
    if chosen is not None:
        if chosen not in ("bundle", "ndjson"):
            raise BadRequest("format must be 'bundle' or 'ndjson'.", reason="invalid_format")
        return chosen == "ndjson"
    accept = request.headers.get("Accept", "").lower()
    return any(kind in accept for kind in _NDJSON_TYPES) and FHIR_JSON not in accept


def _codec(request: web.Request) -> CursorCodec:
    key = request.app[SETTINGS].link_signing_key
    if key is None:  # pragma: no cover - create_app refuses to start without it
        raise RuntimeError("no link-signing key")
    return CursorCodec(key.reveal())


def _feed_query(request: web.Request, scope: str) -> FeedQuery:
    limit, types, ndjson = _limit(request), _types(request), _wants_ndjson(request)
    since = request.query.get("since")
    positions: dict[str, int] = {}
    if since is not None:
        cursor = _codec(request).decode(since, scope=scope)
        if request.query.getall("type", []) and types != cursor.types:
            raise BadRequest(
                "type must match the filter the 'since' cursor was issued for (or be left out).",
                reason="cursor_mismatch",
            )
        types, positions = cursor.types, dict(cursor.positions)
    return FeedQuery(scope=scope, types=types, positions=positions, limit=limit, ndjson=ndjson)


async def plan_page(
    request: web.Request, connection_ids: Sequence[str], query: FeedQuery
) -> PagePlan:
    """Decide the page: per connection in order, the seq range it contributes."""
    types = query.types or None
    positions = {cid: query.positions.get(cid, 0) for cid in connection_ids}
    ranges: list[tuple[str, int, int]] = []
    remaining, has_more = query.limit, False
    async with request.app[SERVICES].sessionmaker() as session:
        # Read before the rows: every seq up to a connection's last_seq read here is committed
        # (the bump and its rows commit together), so a connection whose matching rows are
        # exhausted can jump to it and a type-filtered feed never rescans other types' rows.
        last = await data_repo.last_seqs(session, connection_ids)
        for cid in connection_ids:
            after = positions[cid]
            seqs = await data_repo.seqs_after(session, cid, after, types=types, limit=remaining + 1)
            if len(seqs) > remaining:
                has_more = True
                if remaining:
                    ranges.append((cid, after, seqs[remaining - 1]))
                    positions[cid] = seqs[remaining - 1]
                break
            if seqs:
                ranges.append((cid, after, seqs[-1]))
                remaining -= len(seqs)
            positions[cid] = max(after, seqs[-1] if seqs else 0, last.get(cid, 0))
    return PagePlan(ranges=ranges, positions=positions, has_more=has_more)


async def _rows(
    request: web.Request, plan: PagePlan, types: tuple[str, ...], *, with_attachments: bool = False
) -> AsyncIterator[tuple[ChangedRow, str, list[Attachment]]]:
    sessionmaker = request.app[SERVICES].sessionmaker
    async with sessionmaker() as session:
        bases = await data_repo.fhir_bases(session, [cid for cid, _, _ in plan.ranges])
    for cid, after, upto in plan.ranges:
        position = after
        while position < upto:
            # One short session per batch: nothing stays open while a slow client reads.
            async with sessionmaker() as session:
                batch = await data_repo.rows_between(
                    session, cid, position, upto, types=types or None, limit=STREAM_BATCH
                )
                documents = [
                    (row.resource_type, row.resource_id)
                    for row in batch
                    if row.resource_type in ATTACHMENT_ELEMENTS and row.deleted_at is None
                ]
                attached = (
                    await attachment_repo.stored_of(session, cid, documents)
                    if with_attachments and documents
                    else {}
                )
            for row in batch:
                yield (
                    row,
                    bases.get(cid, ""),
                    attached.get((row.resource_type, row.resource_id), []),
                )
            if len(batch) < STREAM_BATCH:
                break
            position = batch[-1].seq


def tombstone(row: ChangedRow) -> bytes:
    """The resource a deleted row is represented by."""
    return orjson.dumps(
        {
            "resourceType": row.resource_type,
            "id": row.resource_id,
            "meta": {
                "lastUpdated": row.deleted_at,
                "extension": [{"url": DELETED_EXTENSION, "valueCode": row.deleted_reason}],
            },
        }
    )


def _resource_bytes(row: ChangedRow) -> bytes:
    return tombstone(row) if row.deleted_at is not None else row.body


def _page_url(request: web.Request, cursor: str | None) -> str:
    params = [(k, v) for k, v in request.query.items() if k != "since"]
    if cursor is not None:
        params.append(("since", cursor))
    base = request.app[SETTINGS].public_url + request.path
    return f"{base}?{urlencode(params)}" if params else base


async def _write_page(
    request: web.Request,
    response: web.StreamResponse,
    plan: PagePlan,
    query: FeedQuery,
    *,
    cursor: str,
    next_url: str,
) -> None:
    if query.ndjson:
        async for row, _, _ in _rows(request, plan, query.types):
            await response.write(_resource_bytes(row) + b"\n")
    else:
        links = [{"relation": "self", "url": _page_url(request, request.query.get("since"))}]
        if plan.has_more:
            links.append({"relation": "next", "url": next_url})
        head = orjson.dumps(
            {
                "resourceType": "Bundle",
                "type": "searchset",
                "timestamp": dt.datetime.now(dt.UTC),
                "meta": {"extension": [{"url": CURSOR_EXTENSION, "valueString": cursor}]},
                "link": links,
            }
        )
        await response.write(head[:-1] + b',"entry":[')
        first = True
        public_url = request.app[SETTINGS].public_url
        async for row, base, attached in _rows(request, plan, query.types, with_attachments=True):
            extensions = [{"url": CONNECTION_EXTENSION, "valueString": row.connection_id}]
            extensions += [attachment_extension(link, public_url) for link in attached]
            entry = orjson.dumps(
                {
                    "fullUrl": f"{base}/{row.resource_type}/{row.resource_id}",
                    "extension": extensions,
                    "search": {"mode": "match"},
                }
            )
            # The stored bytes are spliced in as they are: no parse, no re-serialisation.
            chunk = entry[:-1] + b',"resource":' + _resource_bytes(row) + b"}"
            await response.write(chunk if first else b"," + chunk)
            first = False
        await response.write(b"]}")


async def serve_feed(
    request: web.Request, connection_ids: Sequence[str], query: FeedQuery
) -> web.StreamResponse:
    """Plan, then stream one page of the feed."""
    plan = await plan_page(request, connection_ids, query)
    cursor = _codec(request).encode(
        FeedCursor(scope=query.scope, types=query.types, positions=plan.positions)
    )
    next_url = _page_url(request, cursor)
    response = web.StreamResponse(status=200)
    response.content_type = NDJSON if query.ndjson else FHIR_JSON
    response.headers["X-Next-Cursor"] = cursor
    response.headers["X-Has-More"] = "true" if plan.has_more else "false"
    if plan.has_more:
        response.headers["Link"] = f'<{next_url}>; rel="next"'
    await response.prepare(request)
    if request.method == "HEAD":
        # Headers only: a body after a HEAD answer would be read as the start of the next
        # response on the same keep-alive connection (a desync behind any pooling proxy).
        await response.write_eof()
        return response
    try:
        await _write_page(request, response, plan, query, cursor=cursor, next_url=next_url)
    except ConnectionResetError:
        # The client went away mid-page; its cursor has not moved, so nothing is lost.
        log.info("feed_client_gone")
        return response
    await response.write_eof()
    return response


async def connection_resources(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/connections/{connection_id}/resources``: one connection's change feed."""
    require_api_key(request)
    connection_id = request.match_info["connection_id"]
    async with request.app[SERVICES].sessionmaker() as session:
        facts = await data_repo.connection_facts(session, connection_id)
    if facts is None:
        raise _not_found()
    _check_owner(request, facts.connection.user_id)
    query = _feed_query(request, connection_scope(connection_id))
    return await serve_feed(request, [connection_id], query)


async def user_resources(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/users/{user_id}/resources``: a user's change feed across connections."""
    require_api_key(request)
    user_id = _user_id(request)
    query = _feed_query(request, user_scope(user_id))
    async with request.app[SERVICES].sessionmaker() as session:
        connection_ids = await data_repo.connection_ids_of_user(session, user_id)
    return await serve_feed(request, connection_ids, query)


def setup_routes(app: web.Application) -> None:
    """Register the data API."""
    app.router.add_get("/api/v1/users/{user_id}/connections", list_user_connections)
    app.router.add_get("/api/v1/users/{user_id}/resources", user_resources)
    app.router.add_get("/api/v1/connections/{connection_id}", get_connection)
    app.router.add_post("/api/v1/connections/{connection_id}/sync", sync_connection)
    app.router.add_get("/api/v1/connections/{connection_id}/resources", connection_resources)
