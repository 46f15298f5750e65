"""The patient's connect pages: choose a provider, go to the EHR, come back connected.

``GET /connect?link=…`` only shows the page (link scanners prefetch URLs); the "Connect" button
POSTs to ``/connect/start``, which uses up the link, starts a patient session and redirects to
the EHR. ``GET /callback/{tenant}`` (or the shared ``/callback`` of tenants registered before
per-tenant redirect URIs) is where the EHR sends the browser back. Every failure renders a page
that says what happened and what to do, never a stack trace.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from syncsvc.connect.grant import LaunchOutcome
from syncsvc.connect.launch import complete_launch, start_launch
from syncsvc.connect.links import peek_connect_link, use_connect_link
from syncsvc.db import repo
from syncsvc.db.search_repo import SearchPage
from syncsvc.directory.picker import connected_providers
from syncsvc.directory.picker_results import group_page, picker_results
from syncsvc.errors import LaunchError
from syncsvc.sync.grant_states import explain_connection
from syncsvc.vocabulary import is_registration_error
from syncsvc.web.cookies import (
    FORM_FIELD,
    PatientSession,
    browser_binding,
    form_is_ours,
    new_browser_binding,
    patient_session,
    render_with_form_token,
    session_user,
    set_browser_binding,
    start_session,
)
from syncsvc.web.handlers.picker_api import PICKER_SCRIPT
from syncsvc.web.keys import RATE_LIMITS, SERVICES, SIGNER
from syncsvc.web.middlewares import SCRIPT_PAGE_POLICY
from syncsvc.web.picker_view import TYPEAHEAD_MIN_LENGTH, search_view, statuses

MAX_FORM_BYTES = 16 * 1024
#: Headings by the kind of failure, so the page's first line already says what happened.
_HEADINGS = {
    "access_denied": "You chose not to share your record",
    "link_used": "This link has already been used",
    "link_expired": "This link has expired",
    "link_invalid": "This link is not valid",
    "link_unknown": "This link is not valid",
    "too_many_attempts": "Too many attempts",
}
#: The heading when the EHR refused because of the application's registration there.
_REGISTRATION_HEADING = "Your provider's setup prevented sharing your record"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _minutes(seconds: int) -> str:
    minutes = max(1, -(-seconds // 60))
    return "a minute" if minutes == 1 else f"{minutes} minutes"


def _error_page(
    request: web.Request, exc: LaunchError, *, status: int = 400, can_retry: bool = False
) -> web.Response:
    context: dict[str, Any] = {
        "heading": _REGISTRATION_HEADING
        if is_registration_error(exc.reason)
        else _HEADINGS.get(exc.reason, "Your record was not connected"),
        "message": exc.message,
        "reason": exc.reason,
        "error_uri": exc.error_uri,
        "error_uri_label": "details from your provider",
        "retry_url": "/connect" if can_retry or session_user(request) else None,
    }
    return aiohttp_jinja2.render_template("launch_error.html", request, context, status=status)


async def _picker_context(
    request: web.Request, user_id: str | None, tenant_name: str | None
) -> dict[str, Any]:
    """What the provider choice shows: the link's one tenant, or a search and its results.

    No page lists every tenant: without a query only the search form (and the patient's own
    providers) is shown, so the page stays small whatever the directory's size.
    """
    sessionmaker = request.app[SERVICES].sessionmaker
    connected = await connected_providers(sessionmaker, user_id) if user_id else []
    if tenant_name is not None:
        async with sessionmaker() as session:
            tenant = await repo.get_tenant_by_name(session, tenant_name)
        # A link for one provider offers that provider only, never the patient's others.
        own = [item for item in connected if item.tenant.name == tenant_name]
        found = SearchPage((tenant,) if tenant else (), has_more=False)
        return {
            "search": False,
            "own": group_page([item.tenant for item in own], statuses(own)),
            "results": picker_results(found, query="", page=1, name_prefix=False, has_more=False),
        }
    return {
        "search": True,
        "own": group_page([item.tenant for item in connected], statuses(connected)),
        "results": await search_view(request, connected),
        "min_length": TYPEAHEAD_MIN_LENGTH,
        "script_url": PICKER_SCRIPT.url,
    }


async def connect_page(request: web.Request) -> web.Response:
    """The provider choice for a connect link (or for the patient's session)."""
    token = request.query.get("link")
    tenant_name: str | None = None
    user_id: str | None = None
    if token:
        try:
            async with request.app[SERVICES].sessionmaker() as session:
                claims = await peek_connect_link(session, request.app[SIGNER], token, now=_now())
        except LaunchError as exc:
            gone = exc.reason in ("link_used", "link_expired")
            return _error_page(request, exc, status=410 if gone else 400)
        tenant_name, user_id = claims.tenant, claims.user_id
    else:
        patient = patient_session(request)
        if patient is None:
            return _error_page(
                request,
                LaunchError(
                    "To connect your record, open the link the application gave you.",
                    reason="link_missing",
                ),
            )
        # The session keeps its link's restriction: only that tenant is offered again.
        tenant_name, user_id = patient.tenant, patient.user_id
    context = await _picker_context(request, user_id, tenant_name)
    context |= {"link": token or "", "start_url": "/connect/start"}
    response = render_with_form_token("connect.html", request, context)
    if context["search"]:
        response.headers["Content-Security-Policy"] = SCRIPT_PAGE_POLICY
    return response


async def _user_for_start(request: web.Request, token: object, tenant_name: str) -> PatientSession:
    """Who a launch is for, and the tenant restriction to keep: from the link (using it up)
    or from the patient session, which carries its link's restriction."""
    if isinstance(token, str) and token:
        async with request.app[SERVICES].sessionmaker.begin() as session:
            claims = await use_connect_link(session, request.app[SIGNER], token, now=_now())
            # Checked before the use commits: a form naming another provider leaves the link
            # unused, so the patient can still connect the provider it names.
            _check_restriction(claims.tenant, tenant_name)
        found = PatientSession(claims.user_id, claims.tenant)
    else:
        patient = patient_session(request)
        if patient is None:
            raise LaunchError(
                "Your session has ended. Open the link the application gave you again, or ask "
                "it for a new one.",
                reason="session_missing",
            )
        found = patient
    _check_restriction(found.tenant, tenant_name)
    return found


def _check_restriction(restricted_to: str | None, tenant_name: str) -> None:
    """LaunchError unless a link or session restricted to one provider names that provider."""
    if restricted_to is not None and restricted_to != tenant_name:
        raise LaunchError("This link is for another provider.", reason="link_tenant_mismatch")


async def start(request: web.Request) -> web.StreamResponse:
    """Use the link (or session), record a launch attempt and redirect to the EHR."""
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        return _error_page(request, LaunchError("The form was too large.", reason="form_too_large"))
    form = await request.post()
    if not form_is_ours(request, form.get(FORM_FIELD)):
        return _error_page(
            request,
            LaunchError(
                "This request did not come from this service's own page. Open the link the "
                "application gave you and press Connect there.",
                reason="form_not_ours",
            ),
            status=403,
        )
    session = session_user(request)
    if session is not None:
        # One link gives a session of hours; each start writes a launch attempt.
        wait = request.app[RATE_LIMITS].connect_start.take(session)
        if wait is not None:
            page = _error_page(
                request,
                LaunchError(
                    f"Too many attempts to connect from this browser. Please wait "
                    f"{_minutes(wait)} and try again.",
                    reason="too_many_attempts",
                ),
                status=429,
            )
            page.headers["Retry-After"] = str(wait)
            return page
    tenant_name = form.get("tenant")
    if not isinstance(tenant_name, str) or not tenant_name:
        return _error_page(
            request, LaunchError("Choose a provider first.", reason="tenant_missing")
        )
    try:
        patient = await _user_for_start(request, form.get("link"), tenant_name)
    except LaunchError as exc:
        return _error_page(request, exc)
    user_id = patient.user_id
    response: web.StreamResponse
    try:
        binding = browser_binding(request) or new_browser_binding()
        launch = await start_launch(
            request.app[SERVICES].sync_context(),
            tenant_name=tenant_name,
            user_id=user_id,
            browser_binding=binding,
            now=_now(),
        )
        response = web.Response(status=303, headers={"Location": launch.authorize_url})
    except LaunchError as exc:
        # The link is used up by now: the session lets the patient retry without a new one.
        response = _error_page(request, exc, can_retry=True)
    else:
        set_browser_binding(request, response, binding)
    start_session(request, response, user_id, patient.tenant)
    return response


async def callback(request: web.Request) -> web.Response:
    """Where the EHR sends the browser back (``redirect_uri``: per tenant, or the shared one)."""
    try:
        outcome = await complete_launch(
            request.app[SERVICES].sync_context(),
            request.query,
            arrived_for=request.match_info.get("tenant"),
            browser_binding=browser_binding(request),
            now=_now(),
        )
    except LaunchError as exc:
        return _error_page(request, exc)
    return await _connected_page(request, outcome)


async def _connected_page(request: web.Request, outcome: LaunchOutcome) -> web.Response:
    async with request.app[SERVICES].sessionmaker() as session:
        explanation = await explain_connection(session, outcome.connection, outcome.tenant)
    context = {
        "connection": outcome.connection,
        "tenant": outcome.tenant,
        "patient_name": outcome.patient_name,
        "explanation": explanation,
        "synced_types": [line.what_shared for line in explanation.types if line.granted],
        "status_url": "/status",
    }
    status = 200 if outcome.connection.status == "active" else 409
    return aiohttp_jinja2.render_template("connected.html", request, context, status=status)


def setup_routes(app: web.Application) -> None:
    """Register the patient pages."""
    app.router.add_get("/connect", connect_page)
    app.router.add_post("/connect/start", start)
    # No HEAD on the callback: answering one would use up the launch and redeem the code.
    app.router.add_get("/callback", callback, allow_head=False)
    app.router.add_get("/callback/{tenant}", callback, allow_head=False)


__all__ = ["setup_routes"]
