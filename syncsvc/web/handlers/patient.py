"""The patient's own pages: the status of their connections, and disconnecting one.

Every page needs the patient session a connect link starts (``syncsvc_session``); without one it
says how to get back: open the link the application gave them. A connection id that is not the
session user's answers exactly like an unknown one (404), so ids leak nothing.

The disconnect form is protected twice against cross-site posts: the session cookie is
``SameSite=Lax`` (not sent on a cross-site POST), and the form carries a token that is an HMAC of
the session cookie itself, which another site cannot read or compute.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import repo, run_repo
from syncsvc.db.models.connections import Connection, Tenant
from syncsvc.db.stats_repo import count_resources
from syncsvc.errors import NotFound
from syncsvc.lifecycle.disconnect import DisconnectResult, disconnect_connection
from syncsvc.sync.explain import explain
from syncsvc.sync.grant_states import load_grant_facts
from syncsvc.sync.type_words import type_sentence
from syncsvc.vocabulary import UNSUPPORTED
from syncsvc.web.cookies import SESSION_COOKIE, render_with_form_token, session_user
from syncsvc.web.keys import SERVICES, SETTINGS

MAX_FORM_BYTES = 16 * 1024
CSRF_FIELD = "csrf"
STATUS_URL = "/status"

_DISCONNECTED_BY = {
    "disconnected_by_patient": "You disconnected it.",
    "disconnected_by_host_app": "The application you use disconnected it.",
    "disconnected_by_operator": "The service operator disconnected it.",
}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _when(moment: dt.datetime | None) -> str | None:
    return None if moment is None else f"{moment:%d %b %Y, %H:%M} UTC"


def csrf_token(request: web.Request) -> str | None:
    """The disconnect form's token for this session (None without a session cookie)."""
    session_cookie = request.cookies.get(SESSION_COOKIE)
    key = request.app[SETTINGS].link_signing_key
    if not session_cookie or key is None:
        return None
    message = f"syncsvc/patient-csrf/{session_cookie}".encode()
    return hmac.new(key.reveal().encode(), message, hashlib.sha256).hexdigest()


def _csrf_valid(request: web.Request, presented: object) -> bool:
    expected = csrf_token(request)
    return (
        expected is not None
        and isinstance(presented, str)
        and hmac.compare_digest(expected, presented)
    )


def _page(
    request: web.Request, status: int, heading: str, message: str, *, signed_in: bool
) -> web.Response:
    context = {
        "heading": heading,
        "message": message,
        "reason": None,
        "error_uri": None,
        "retry_url": None,
        "status_url": STATUS_URL if signed_in else None,
    }
    return aiohttp_jinja2.render_template("launch_error.html", request, context, status=status)


def _signed_out(request: web.Request) -> web.Response:
    return _page(
        request,
        401,
        "Open your application's link first",
        "To see or change your connected records, open the link the application gave you "
        "again (or ask it for a new one). For your privacy, this page is only shown in the "
        "browser where you connected.",
        signed_in=False,
    )


def _not_found(request: web.Request) -> web.Response:
    return _page(
        request,
        404,
        "This connection was not found",
        "It may have been removed. Your connections are listed on your status page.",
        signed_in=True,
    )


async def _connection_view(
    session: AsyncSession, connection: Connection, tenant: Tenant
) -> dict[str, Any]:
    facts = await load_grant_facts(session, connection, tenant)
    explanation = explain(facts)
    synced = [line for line in explanation.types if line.resources or line.granted]
    view: dict[str, Any] = {
        "id": connection.id,
        "provider": tenant.display_name,
        "tenant": tenant.name,
        "status": connection.status,
        "explanation": explanation,
        "error_uri": connection.error_uri if connection.status == "needs_reauth" else None,
        "detail": _DISCONNECTED_BY.get(connection.status_reason or "")
        if connection.status == "revoked"
        else None,
        "connected_at": _when(connection.connected_at),
        "last_sync": _when(connection.last_success_at),
        "types": synced,
        "not_granted": [
            line
            for line in explanation.types
            if not line.granted and line.state not in ("withdrawn", UNSUPPORTED)
        ],
        "unsupported": explanation.unsupported,
        "total": sum(facts.counts.values()),
        "can_reconnect": explanation.can_reconnect,
        "can_disconnect": connection.status != "revoked" or bool(facts.counts),
        "revocation_pending": connection.status == "revoked" and facts.revocation_pending,
        "type_problems": [],
    }
    if connection.status == "active":
        states = await run_repo.sync_states(session, connection.id)
        order = [line.type for line in explanation.types]
        ranked = sorted(states, key=lambda t: (order.index(t) if t in order else len(order), t))
        view["type_problems"] = [
            sentence for name in ranked if (sentence := type_sentence(states[name])) is not None
        ]
    return view


async def status_page(request: web.Request) -> web.Response:
    """``GET /status``: every connection of the session's user, in plain words."""
    user_id = session_user(request)
    if user_id is None:
        return _signed_out(request)
    views = []
    async with request.app[SERVICES].sessionmaker() as session:
        for connection in await repo.list_connections(session, user_id=user_id):
            tenant = await repo.get_tenant(session, connection.tenant_id)
            if tenant is not None:
                views.append(await _connection_view(session, connection, tenant))
    context = {"connections": views, "start_url": "/connect/start", "connect_url": "/connect"}
    return render_with_form_token("status.html", request, context)


async def _own_connection(
    request: web.Request, user_id: str
) -> tuple[Connection, Tenant, int] | None:
    connection_id = request.match_info["connection_id"]
    async with request.app[SERVICES].sessionmaker() as session:
        connection = await repo.get_connection(session, connection_id)
        if connection is None or connection.user_id != user_id:
            return None
        tenant = await repo.get_tenant(session, connection.tenant_id)
        if tenant is None:  # pragma: no cover - the foreign key forbids it
            return None
        total = sum((await count_resources(session, connection.id)).values())
    return connection, tenant, total


async def disconnect_page(request: web.Request) -> web.Response:
    """``GET /status/connections/{id}/disconnect``: what disconnecting does, and the choice."""
    user_id = session_user(request)
    if user_id is None:
        return _signed_out(request)
    found = await _own_connection(request, user_id)
    if found is None:
        return _not_found(request)
    connection, tenant, total = found
    context = {
        "connection": connection,
        "provider": tenant.display_name,
        "total": total,
        "revocation_offered": bool((tenant.endpoints or {}).get("revocation_endpoint")),
        "csrf_field": CSRF_FIELD,
        "csrf": csrf_token(request),
        "action": request.path,
        "status_url": STATUS_URL,
    }
    return aiohttp_jinja2.render_template("disconnect_confirm.html", request, context)


async def disconnect(request: web.Request) -> web.Response:
    """``POST /status/connections/{id}/disconnect``: disconnect, then say exactly what happened."""
    user_id = session_user(request)
    if user_id is None:
        return _signed_out(request)
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        return _page(request, 400, "The form was too large", "Please try again.", signed_in=True)
    form = await request.post()
    if not _csrf_valid(request, form.get(CSRF_FIELD)):
        return _page(
            request,
            403,
            "This form has expired",
            "Nothing was changed. Go back to your connections and try again.",
            signed_in=True,
        )
    choice = form.get("data", "erase")
    if choice not in ("erase", "keep"):
        return _page(
            request, 400, "Choose what to do with your data", "Please try again.", signed_in=True
        )
    ctx = request.app[SERVICES].sync_context()
    try:
        result = await disconnect_connection(
            ctx,
            request.match_info["connection_id"],
            by="patient",
            erase=choice == "erase",
            user_id=user_id,
        )
    except NotFound:
        return _not_found(request)
    return _disconnected_page(request, result)


def _disconnected_page(request: web.Request, result: DisconnectResult) -> web.Response:
    context = {"result": result, "status_url": STATUS_URL}
    return aiohttp_jinja2.render_template("disconnected.html", request, context)


def setup_routes(app: web.Application) -> None:
    """Register the patient's status and disconnect pages."""
    app.router.add_get(STATUS_URL, status_page)
    app.router.add_get("/status/connections/{connection_id}/disconnect", disconnect_page)
    app.router.add_post("/status/connections/{connection_id}/disconnect", disconnect)


__all__ = ["csrf_token", "setup_routes"]
