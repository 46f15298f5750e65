"""The sandbox's authorization server: authorize (login + consent), JWKS and error pages.

Routes exist for every vendor URL shape in :data:`~.profiles.ROUTE_TEMPLATES`; a request through a
shape that is not its tenant's vendor answers 404. The token, revocation and introspection
endpoints live in :mod:`.token_endpoint`, the discovery documents in :mod:`.discovery`; both are
registered here so the server assembles one authorization server.

Authorize errors follow RFC 6749 §4.1.2.1: an unknown client or a redirect_uri that does not match
the registration exactly gets an HTML page (redirecting would make the sandbox an open redirector);
everything else redirects back with ``error``, ``error_description``, ``state`` and, for the
Cerner-documented cases, an ``error_uri`` naming the Cerner URN.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from yarl import URL

from . import discovery, token_endpoint
from .auth_pages import error_instance_page, error_page, login_page
from .auth_support import (
    CLIENT_PERSONA_MISMATCH,
    CODE_LIFETIME,
    DENIED_BY_SERVER,
    INVALID_LAUNCH_CODE,
    MISSING_PATIENT,
    URN_EXPLANATIONS,
    AuthContext,
    error_uri,
    resolve_tenant,
)
from .client_auth import ClientAuthenticator
from .config import ClientRegistration, PatientSpec, TenantConfig, Vendor
from .profiles import ROUTE_TEMPLATES
from .scope_policy import needs_patient_context, split
from .state import AuthCode, SandboxState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: RFC 7636 §4.1: a code verifier (hence an S256 challenge) is 43 to 128 unreserved characters.
_PKCE_CHALLENGE = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
#: The authorize request parameters carried through the login form.
AUTHORIZE_PARAMS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "aud",
    "launch",
    "nonce",
    "code_challenge",
    "code_challenge_method",
)


class AuthorizePageError(Exception):
    """An authorize error answered with an HTML page, never a redirect."""

    def __init__(self, title: str, detail: str) -> None:
        super().__init__(detail)
        self.title = title
        self.detail = detail


class AuthorizeRedirectError(Exception):
    """An authorize error redirected back to the client."""

    def __init__(self, error: str, description: str, urn: str | None = None) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.urn = urn


@dataclass(frozen=True)
class AuthorizeRequest:
    """A validated authorization request."""

    tenant: TenantConfig
    client: ClientRegistration
    redirect_uri: str
    state: str | None
    scopes: list[str]
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None


def setup_routes(app: web.Application, state: SandboxState) -> None:
    """Register the authorization server and discovery routes of every vendor URL shape."""
    ctx = AuthContext(state=state, authenticator=ClientAuthenticator(state.config))
    app.cleanup_ctx.append(ctx.authenticator.http_ctx)
    for vendor, templates in ROUTE_TEMPLATES.items():
        app.router.add_get(templates["authorize"], _authorize_get(ctx, vendor))
        app.router.add_post(templates["authorize"], _authorize_post(ctx, vendor))
        app.router.add_get(templates["jwks"], _jwks(ctx, vendor))
    # Every vendor shares one error-instance path.
    app.router.add_get(ROUTE_TEMPLATES["cerner"]["errors"], _error_instance)
    token_endpoint.setup_routes(app, ctx)
    discovery.setup_routes(app, state)


def _jwks(ctx: AuthContext, vendor: Vendor) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        resolve_tenant(request, ctx.state, vendor)
        return web.json_response(ctx.state.signer.jwks())

    return handler


async def _error_instance(request: web.Request) -> web.StreamResponse:
    urn = request.match_info["urn"]
    explanation = URN_EXPLANATIONS.get(urn)
    if explanation is None:
        raise web.HTTPNotFound
    page = error_instance_page(urn, explanation, request.query)
    return web.Response(text=page, content_type="text/html")


def _authorize_get(ctx: AuthContext, vendor: Vendor) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        tenant = resolve_tenant(request, ctx.state, vendor)
        params = _params(request.query)
        if tenant.policy.forward_authorize_to is not None:
            return _forward(ctx, tenant, params)
        return _authorize(ctx, tenant, params, request.path, decision=None, form={})

    return handler


def _forward(ctx: AuthContext, tenant: TenantConfig, params: Mapping[str, str]) -> web.Response:
    """The mix-up attack's first step: send the browser on to an honest tenant's authorize."""
    policy = tenant.policy
    target = ctx.state.tenant(policy.forward_authorize_to or "")
    if target is None:
        raise web.HTTPNotFound
    urls = ctx.state.urls(target)
    forwarded = {
        **params,
        "client_id": policy.forward_client_id or params.get("client_id", ""),
        "redirect_uri": policy.forward_redirect_uri or params.get("redirect_uri", ""),
        "aud": urls.fhir_base,
    }
    return _redirect(urls.authorize, forwarded)


def _authorize_post(ctx: AuthContext, vendor: Vendor) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        tenant = resolve_tenant(request, ctx.state, vendor)
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        decision = form.get("decision") or "approve"
        return _authorize(ctx, tenant, _params(form), request.path, decision=decision, form=form)

    return handler


def _params(source: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(source[k]) for k in AUTHORIZE_PARAMS if k in source}


def _authorize(
    ctx: AuthContext,
    tenant: TenantConfig,
    params: Mapping[str, str],
    path: str,
    *,
    decision: str | None,
    form: Mapping[str, str],
) -> web.StreamResponse:
    """Validate, then auto-approve, show the login page, or act on the person's decision."""
    try:
        client, redirect_uri = _client_and_redirect(ctx, params)
    except AuthorizePageError as exc:
        return web.Response(
            status=400, text=error_page(exc.title, exc.detail), content_type="text/html"
        )
    try:
        request = _validate(ctx, tenant, client, redirect_uri, params)
        if decision is None and tenant.policy.auto_approve_patient is None:
            page = login_page(tenant, client.client_id, request.scopes, params, action=path)
            return web.Response(text=page, content_type="text/html")
        if decision == "deny":
            raise AuthorizeRedirectError("access_denied", "The patient denied the request")
        patient = _chosen_patient(tenant, decision, form)
        if patient is None:
            page = login_page(
                tenant,
                client.client_id,
                request.scopes,
                params,
                action=path,
                message="Wrong login or password",
            )
            return web.Response(status=401, text=page, content_type="text/html")
    except AuthorizeRedirectError as exc:
        return _redirect_error(
            ctx, tenant, client, redirect_uri, state=params.get("state"), exc=exc
        )
    code = _issue_code(ctx, request, patient.id)
    return _redirect(
        redirect_uri, {"code": code.code, "state": request.state or "", **_iss(ctx, tenant)}
    )


def _iss(ctx: AuthContext, tenant: TenantConfig) -> dict[str, str]:
    """RFC 9207's ``iss`` response parameter, for tenants whose policy sends it."""
    return {"iss": ctx.state.urls(tenant).issuer} if tenant.policy.send_response_iss else {}


def _client_and_redirect(
    ctx: AuthContext, params: Mapping[str, str]
) -> tuple[ClientRegistration, str]:
    client_id = params.get("client_id", "")
    client = ctx.state.config.client(client_id) if client_id else None
    if client is None:
        raise AuthorizePageError(
            "Unknown application", f"No client is registered as '{client_id}'."
        )
    redirect_uri = params.get("redirect_uri", "")
    # Exact string comparison, as SMART and the OAuth security BCP require.
    if redirect_uri not in client.redirect_uris:
        raise AuthorizePageError(
            "Invalid redirect URI",
            f"'{redirect_uri}' is not a redirect URI registered for '{client_id}'.",
        )
    return client, redirect_uri


def _validate(
    ctx: AuthContext,
    tenant: TenantConfig,
    client: ClientRegistration,
    redirect_uri: str,
    params: Mapping[str, str],
) -> AuthorizeRequest:
    policy = tenant.policy
    if not params.get("state"):
        raise AuthorizeRedirectError("invalid_request", "state is required")
    if params.get("response_type") != "code":
        raise AuthorizeRedirectError("unsupported_response_type", "response_type must be 'code'")
    if client.tenants and tenant.id not in client.tenants:
        raise AuthorizeRedirectError(
            "access_denied", "The application is not enabled at this tenant", DENIED_BY_SERVER
        )
    if client.launch == "ehr" and "launch" not in params:
        # Cerner's answer to a standalone launch of an app registered for EHR launch: no
        # patient is in context, refused as access_denied with the missing-patient URN.
        raise AuthorizeRedirectError(
            "access_denied", "No patient is in context for this launch", MISSING_PATIENT
        )
    if client.persona != "patient":
        raise AuthorizeRedirectError(
            "unauthorized_client",
            "The application is not registered for the patient persona",
            CLIENT_PERSONA_MISMATCH,
        )
    if params.get("aud") != ctx.state.urls(tenant).fhir_base:
        raise AuthorizeRedirectError("invalid_request", "aud must be this tenant's FHIR base URL")
    if "launch" in params:
        raise AuthorizeRedirectError(
            "invalid_request", "The launch parameter names no launch", INVALID_LAUNCH_CODE
        )
    scopes = split(params.get("scope"))
    if needs_patient_context(scopes) and "launch/patient" not in scopes:
        # As in Cerner's answers: access_denied, with the missing-patient URN in error_uri.
        raise AuthorizeRedirectError(
            "access_denied", "Patient scopes need launch/patient", MISSING_PATIENT
        )
    challenge, method = _pkce(policy.pkce, params)
    return AuthorizeRequest(
        tenant=tenant,
        client=client,
        redirect_uri=redirect_uri,
        state=params["state"],
        scopes=scopes,
        nonce=params.get("nonce"),
        code_challenge=challenge,
        code_challenge_method=method,
    )


def _pkce(mode: str, params: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The code challenge to bind to the code, per the tenant's PKCE mode."""
    challenge = params.get("code_challenge")
    method = params.get("code_challenge_method")
    if mode == "ignored":
        return None, None
    if challenge is None:
        if mode == "required":
            raise AuthorizeRedirectError("invalid_request", "code_challenge is required (S256)")
        return None, None
    if method != "S256":
        raise AuthorizeRedirectError("invalid_request", "code_challenge_method must be S256")
    if not _PKCE_CHALLENGE.match(challenge):
        raise AuthorizeRedirectError("invalid_request", "code_challenge is malformed")
    return challenge, method


def _chosen_patient(
    tenant: TenantConfig, decision: str | None, form: Mapping[str, str]
) -> PatientSpec | None:
    """The patient approved: the auto-approve patient, or the one who logged in on the form."""
    if decision is None:
        patient = _patient(tenant, tenant.policy.auto_approve_patient or "")
        if patient is None:
            raise AuthorizeRedirectError(
                "access_denied", "The auto-approve patient is not at this tenant", DENIED_BY_SERVER
            )
        return patient
    patient = _patient(tenant, form.get("username", ""))
    password = form.get("password", "")
    if patient is None or not hmac.compare_digest(password.encode(), patient.password.encode()):
        return None
    return patient


def _patient(tenant: TenantConfig, login: str) -> PatientSpec | None:
    if not login:
        return None
    return next((p for p in tenant.patients if login in (p.id, p.username)), None)


def _issue_code(ctx: AuthContext, request: AuthorizeRequest, patient_id: str) -> AuthCode:
    state = ctx.state
    now = state.now()
    # Keep used codes a while after expiry so a late replay is still recognised as one.
    stale = [k for k, c in state.codes.items() if c.expires_at < now - 10 * CODE_LIFETIME]
    for key in stale:
        del state.codes[key]
        ctx.code_grants.pop(key, None)
    code = AuthCode(
        code=state.new_secret(),
        tenant_id=request.tenant.id,
        client_id=request.client.client_id,
        redirect_uri=request.redirect_uri,
        patient_id=patient_id,
        scopes=request.scopes,
        code_challenge=request.code_challenge,
        code_challenge_method=request.code_challenge_method,
        nonce=request.nonce,
        expires_at=now + CODE_LIFETIME,
    )
    state.codes[code.code] = code
    return code


def _redirect(redirect_uri: str, query: Mapping[str, str]) -> web.Response:
    location = URL(redirect_uri).extend_query({k: v for k, v in query.items() if v})
    return web.Response(status=302, headers={"Location": str(location)})


def _redirect_error(
    ctx: AuthContext,
    tenant: TenantConfig,
    client: ClientRegistration,
    redirect_uri: str,
    *,
    state: str | None,
    exc: AuthorizeRedirectError,
) -> web.Response:
    query = {
        "error": exc.error,
        "error_description": exc.description,
        "state": state or "",
        **_iss(ctx, tenant),
    }
    if exc.urn is not None:
        query["error_uri"] = error_uri(
            ctx.state,
            exc.urn,
            client_id=client.client_id,
            tenant_id=tenant.id,
            persona=client.persona,
        )
    return _redirect(redirect_uri, query)
