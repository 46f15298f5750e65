"""The sandbox's token endpoint (RFC 6749), revocation (RFC 7009) and introspection (RFC 7662).

Access tokens are JWTs signed by the sandbox; the FHIR server reads them, so their claims are a
contract: ``iss``, ``aud`` (the tenant's FHIR base), ``sub``, ``exp``, ``iat``, ``jti``, ``tenant``,
``host``, ``scope``, ``patient``, ``client_id`` and ``gid`` (the grant id; revoking the grant
invalidates its access tokens), plus Cerner's ``urn:cerner:authorization:claims:version:1`` claim
for the cerner profile. Refresh tokens are opaque and stand for a :class:`~.state.Grant`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import math
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from .auth_support import (
    EMPTY_SCOPES,
    INVALID_CLIENT,
    INVALID_GRANT,
    THROTTLED,
    AuthContext,
    error_uri,
    resolve_tenant,
)
from .client_auth import ClientAuthError
from .config import ClientRegistration, FaultSpec, PatientSpec, TenantConfig, Vendor
from .faults import RESET_LOG_STATUS, reset_connection
from .profiles import ROUTE_TEMPLATES
from .scope_policy import grant_scopes, issues_refresh_token, returned_scope, split
from .state import AuthCode, Grant

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: RFC 6749 §5.1: token responses must not be cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
CERNER_CLAIMS = "urn:cerner:authorization:claims:version:1"
#: What Epic's merged token endpoint answers when overloaded: HTML, not OAuth JSON.
EPIC_MERGED_400_HTML = (
    "<html><head><title>400 Bad Request</title></head><body><h1>Bad Request</h1>"
    "<p>The request could not be processed.</p></body></html>"
)


class TokenError(Exception):
    """An OAuth error answer of the token endpoint."""

    def __init__(
        self,
        error: str,
        description: str,
        *,
        urn: str | None = None,
        status: int = 400,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.urn = urn
        self.status = status
        self.headers = dict(headers or {})


def invalid_grant(description: str) -> TokenError:
    """An ``invalid_grant`` error."""
    return TokenError("invalid_grant", description, urn=INVALID_GRANT)


def setup_routes(app: web.Application, ctx: AuthContext) -> None:
    """Register token, revocation and introspection routes for every vendor URL shape."""
    for vendor, templates in ROUTE_TEMPLATES.items():
        app.router.add_post(templates["token"], _token_handler(ctx, vendor))
        app.router.add_post(templates["revoke"], _revoke_handler(ctx, vendor))
        app.router.add_post(templates["introspect"], _introspect_handler(ctx, vendor))


async def _form(request: web.Request) -> dict[str, str]:
    data: MultiDictProxy[Any] = await request.post()
    return {key: value for key, value in data.items() if isinstance(value, str)}


def _error_response(
    ctx: AuthContext, tenant: TenantConfig, client_id: str, exc: TokenError
) -> web.Response:
    body: dict[str, str] = {"error": exc.error, "error_description": exc.description}
    if exc.urn is not None and tenant.vendor == "cerner":
        client = ctx.state.config.client(client_id) if client_id else None
        body["error_uri"] = error_uri(
            ctx.state,
            exc.urn,
            client_id=client_id,
            tenant_id=tenant.id,
            persona=client.persona if client is not None else "patient",
        )
    return web.json_response(body, status=exc.status, headers={**NO_STORE, **exc.headers})


def _client_error(
    ctx: AuthContext, tenant: TenantConfig, form: Mapping[str, str], exc: ClientAuthError
) -> web.Response:
    headers = {"WWW-Authenticate": 'Basic realm="sandbox"'} if exc.basic_attempted else {}
    error = TokenError(
        "invalid_client", exc.description, urn=INVALID_CLIENT, status=401, headers=headers
    )
    return _error_response(ctx, tenant, form.get("client_id", ""), error)


async def _authenticate(
    ctx: AuthContext, request: web.Request, tenant: TenantConfig, form: Mapping[str, str]
) -> ClientRegistration:
    urls = ctx.state.urls(tenant)
    audiences = (urls.token, urls.revoke, urls.introspect)
    client = await ctx.authenticator.authenticate(request.headers, form, audiences)
    if client.tenants and tenant.id not in client.tenants:
        raise ClientAuthError(f"Client {client.client_id} is not enabled at this tenant")
    return client


def _token_handler(ctx: AuthContext, vendor: Vendor) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        tenant = resolve_tenant(request, ctx.state, vendor)
        fault = await _token_fault(ctx, request, tenant)
        if fault is not None:
            return fault
        form = await _form(request)
        try:
            client = await _authenticate(ctx, request, tenant, form)
        except ClientAuthError as exc:
            return _client_error(ctx, tenant, form, exc)
        try:
            body = _grant(ctx, tenant, client, form)
        except TokenError as exc:
            return _error_response(ctx, tenant, client.client_id, exc)
        return web.json_response(body, headers=NO_STORE)

    return handler


async def _token_fault(
    ctx: AuthContext, request: web.Request, tenant: TenantConfig, target: str = "token"
) -> web.Response | None:
    """Apply the tenant's faults for ``target`` (``token`` or ``revoke``); a response fails it."""
    for fault in tenant.faults:
        if fault.target != target:
            continue
        if fault.kind == "latency" and ctx.state.should_fire(fault):
            await asyncio.sleep(fault.latency_ms / 1000)
        elif fault.kind == "token_outage" and ctx.state.should_fire(fault):
            return web.Response(
                status=503,
                text="<html><body><h1>503 Service Unavailable</h1></body></html>",
                content_type="text/html",
                headers={"Retry-After": str(fault.retry_after)},
            )
        elif fault.kind == "epic_merged_400_html" and ctx.state.should_fire(fault):
            return web.Response(status=400, text=EPIC_MERGED_400_HTML, content_type="text/html")
        elif fault.kind in _TOKEN_ERROR_KINDS and ctx.state.should_fire(fault):
            return _token_error_fault(request, fault)
    return None


#: Generic faults that also apply to the token endpoint (``target="token"``).
_TOKEN_ERROR_KINDS = frozenset(
    {
        "status_500",
        "status_503",
        "throttle",
        "throttle_no_retry_after",
        "reset",
        "malformed_json",
        "truncated",
    }
)


def _token_error_fault(request: web.Request, fault: FaultSpec) -> web.Response:
    """A broken token answer: an outage, throttling, a dropped connection or a broken body."""
    if fault.kind == "throttle":
        return web.json_response(
            {"error": "temporarily_unavailable", "error_description": "Too many requests"},
            status=429,
            headers={"Retry-After": str(fault.retry_after)},
        )
    if fault.kind == "throttle_no_retry_after":
        return web.json_response({"error": "temporarily_unavailable"}, status=429)
    if fault.kind in ("status_500", "status_503"):
        return web.Response(status=int(fault.kind[-3:]), text="Server error (injected)")
    if fault.kind == "malformed_json":
        return web.Response(
            status=200, text='{"access_token": "abc", ', content_type="application/json"
        )
    if fault.kind == "truncated":
        return web.Response(status=200, text='{"access_tok', content_type="application/json")
    reset_connection(request)
    return web.Response(status=RESET_LOG_STATUS)


def _grant(
    ctx: AuthContext, tenant: TenantConfig, client: ClientRegistration, form: Mapping[str, str]
) -> dict[str, Any]:
    grant_type = form.get("grant_type")
    if grant_type == "authorization_code":
        return exchange_code(ctx, tenant, client, form)
    if grant_type == "refresh_token":
        return refresh(ctx, tenant, client, form)
    raise TokenError("unsupported_grant_type", f"grant_type '{grant_type}' is not supported")


def exchange_code(
    ctx: AuthContext, tenant: TenantConfig, client: ClientRegistration, form: Mapping[str, str]
) -> dict[str, Any]:
    """The authorization_code grant: a new grant and its first tokens."""
    state = ctx.state
    code = state.codes.get(form.get("code", ""))
    if code is None or code.tenant_id != tenant.id or code.client_id != client.client_id:
        raise invalid_grant("Unknown authorization code")
    if code.used:
        # RFC 6749 §4.1.2: a code presented twice should revoke what was issued from it.
        issued = state.grants.get(ctx.code_grants.get(code.code, ""))
        if issued is not None:
            revoke_grant(issued, "authorization code replayed")
        raise invalid_grant("The authorization code was already used")
    code.used = True
    if state.now() > code.expires_at:
        raise invalid_grant("The authorization code has expired")
    if form.get("redirect_uri") != code.redirect_uri:
        raise invalid_grant("redirect_uri does not match the authorization request")
    _check_pkce(code, form.get("code_verifier"))
    granted = grant_scopes(code.scopes, client, tenant.policy, _persona(tenant, code.patient_id))
    if not granted:
        raise TokenError("invalid_scope", "No requested scope can be granted", urn=EMPTY_SCOPES)
    grant = _new_grant(ctx, tenant, code, granted)
    ctx.code_grants[code.code] = grant.grant_id
    return _token_body(ctx, tenant, grant, granted, nonce=code.nonce, with_id_token=True)


def _persona(tenant: TenantConfig, patient_id: str | None) -> PatientSpec | None:
    return next((p for p in tenant.patients if p.id == patient_id), None)


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of ``verifier`` (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _check_pkce(code: AuthCode, verifier: str | None) -> None:
    if code.code_challenge is None:
        return
    if not verifier:
        raise invalid_grant("code_verifier is required")
    if not hmac.compare_digest(pkce_challenge(verifier), code.code_challenge):
        raise invalid_grant("code_verifier does not match the code_challenge")


def _new_grant(ctx: AuthContext, tenant: TenantConfig, code: AuthCode, granted: list[str]) -> Grant:
    state = ctx.state
    now = state.now()
    policy = tenant.policy
    grant = Grant(
        grant_id=str(uuid.uuid4()),
        tenant_id=tenant.id,
        client_id=code.client_id,
        patient_id=code.patient_id,
        scopes=granted,
        approved=list(code.scopes),
        created_at=now,
        last_used_at=now,
    )
    if issues_refresh_token(granted):
        grant.refresh_token = state.new_secret()
        state.refresh_index[grant.refresh_token] = grant.grant_id
        if policy.refresh_absolute_lifetime is not None:
            grant.refresh_expires_at = now + policy.refresh_absolute_lifetime
    state.grants[grant.grant_id] = grant
    return grant


def revoke_grant(grant: Grant, reason: str) -> None:
    """Revoke a grant: its refresh token and every access token issued under it stop working."""
    if not grant.revoked:
        grant.revoked = True
        grant.revoked_reason = reason


def refresh(
    ctx: AuthContext, tenant: TenantConfig, client: ClientRegistration, form: Mapping[str, str]
) -> dict[str, Any]:
    """The refresh_token grant, per the tenant's refresh mode and failure policies."""
    state = ctx.state
    policy = tenant.policy
    grant = _grant_for_refresh_token(ctx, tenant, form.get("refresh_token", ""))
    if grant.client_id != client.client_id:
        raise invalid_grant("The refresh token was issued to another client")
    if grant.revoked:
        raise invalid_grant("The grant has been revoked")
    now = state.now()
    if (
        policy.refresh_idle_limit is not None
        and now - grant.last_used_at > policy.refresh_idle_limit
    ):
        revoke_grant(grant, "idle")
        raise invalid_grant("The refresh token was unused for too long")
    if grant.refresh_expires_at is not None and now > grant.refresh_expires_at:
        raise invalid_grant("The refresh token has expired")
    _check_throttle(grant, policy.refresh_min_interval, now)
    base = grant.approved if policy.widen_on_refresh and grant.approved else grant.scopes
    current = grant_scopes(base, client, policy, _persona(tenant, grant.patient_id))
    if not current:
        raise TokenError(
            "invalid_scope", "No scope of this grant is granted any more", urn=EMPTY_SCOPES
        )
    requested = split(form.get("scope"))
    widened = [s for s in requested if s not in current]
    if widened:
        raise TokenError("invalid_scope", f"A refresh may only narrow scopes: {' '.join(widened)}")
    grant.scopes = current
    grant.last_used_at = now
    grant.last_refresh_at = now
    grant.refresh_count += 1
    _rotate(ctx, tenant, grant, now)
    token_scopes = [s for s in current if s in requested] if requested else current
    return _token_body(ctx, tenant, grant, token_scopes, nonce=None, with_id_token=False)


def _grant_for_refresh_token(ctx: AuthContext, tenant: TenantConfig, token: str) -> Grant:
    state = ctx.state
    current = state.grants.get(state.refresh_index.get(token, ""))
    if current is not None and current.tenant_id == tenant.id:
        return current
    retired = state.grants.get(state.retired_index.get(token, ""))
    if retired is None or retired.tenant_id != tenant.id:
        raise invalid_grant("Unknown refresh token")
    if tenant.policy.refresh_mode == "strict_rotation":
        # OAuth 2.0 Security BCP §4.14.2: reuse of a rotated token means it leaked; revoke all.
        revoke_grant(retired, "refresh token reuse")
        raise invalid_grant("The refresh token was already used; the grant is revoked")
    raise invalid_grant("The refresh token has been replaced by a newer one")


def _check_throttle(grant: Grant, min_interval: int, now: float) -> None:
    if not min_interval or grant.last_refresh_at is None:
        return
    elapsed = now - grant.last_refresh_at
    if elapsed < min_interval:
        retry_after = max(1, math.ceil(min_interval - elapsed))
        raise TokenError(
            "temporarily_unavailable",
            f"Refreshed too often; retry in {retry_after} s",
            urn=THROTTLED,
            status=429,
            headers={"Retry-After": str(retry_after)},
        )


def _rotate(ctx: AuthContext, tenant: TenantConfig, grant: Grant, now: float) -> None:
    policy = tenant.policy
    if policy.refresh_mode == "none" or grant.refresh_token is None:
        return
    state = ctx.state
    old = grant.refresh_token
    state.refresh_index.pop(old, None)
    state.retired_index[old] = grant.grant_id
    grant.retired_refresh_tokens.add(old)
    grant.refresh_token = state.new_secret()
    state.refresh_index[grant.refresh_token] = grant.grant_id
    if policy.refresh_mode == "indefinite" and policy.refresh_absolute_lifetime is not None:
        grant.refresh_expires_at = now + policy.refresh_absolute_lifetime


def _token_body(
    ctx: AuthContext,
    tenant: TenantConfig,
    grant: Grant,
    scopes: list[str],
    *,
    nonce: str | None,
    with_id_token: bool,
) -> dict[str, Any]:
    state = ctx.state
    policy = tenant.policy
    now = int(state.now())
    scope = " ".join(scopes)
    claims = access_token_claims(ctx, tenant, grant, scope, now)
    if policy.opaque_tokens:
        access_token = state.new_secret()
        state.opaque_access_tokens[access_token] = claims
    else:
        access_token = state.signer.sign(claims)
    body: dict[str, Any] = {
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": policy.access_token_lifetime,
        "scope": returned_scope(scopes, policy),
        "patient": grant.patient_id,
        "need_patient_banner": True,
    }
    if policy.token_response_tenant and not policy.opaque_tokens:
        body["tenant"] = policy.issue_tokens_for_tenant or tenant.id
    if policy.refresh_names_patient is not None and not with_id_token:
        body["patient"] = policy.refresh_names_patient
    if not policy.token_response_patient and with_id_token:
        del body["patient"]
    if with_id_token and "openid" in scopes:
        body["id_token"] = state.signer.sign(
            id_token_claims(ctx, tenant, grant, scopes, nonce=nonce, now=now)
        )
    if grant.refresh_token is not None:
        body["refresh_token"] = grant.refresh_token
    return body


def access_token_claims(
    ctx: AuthContext, tenant: TenantConfig, grant: Grant, scope: str, now: int
) -> dict[str, Any]:
    """The claims of an access token (the contract the FHIR server reads)."""
    urls = ctx.state.urls(tenant)
    tenant_claim = tenant.policy.issue_tokens_for_tenant or tenant.id
    claims: dict[str, Any] = {
        "iss": urls.issuer,
        "aud": urls.fhir_base,
        "sub": grant.patient_id,
        "iat": now,
        "exp": now + tenant.policy.access_token_lifetime,
        "jti": uuid.uuid4().hex,
        "tenant": tenant_claim,
        "host": tenant.host,
        "scope": scope,
        "patient": grant.patient_id,
        "client_id": grant.client_id,
        "gid": grant.grant_id,
    }
    if tenant.vendor == "cerner":
        claims[CERNER_CLAIMS] = {
            "ver": "1.0",
            "tnt": tenant_claim,
            "azs": scope,
            "user": {"principal": grant.patient_id, "principalType": "PATIENT"},
            "ctx": {"patient": grant.patient_id},
        }
    return claims


def id_token_claims(
    ctx: AuthContext,
    tenant: TenantConfig,
    grant: Grant,
    scopes: list[str],
    *,
    nonce: str | None,
    now: int,
) -> dict[str, Any]:
    """The claims of an OpenID Connect id_token for the patient of ``grant``."""
    urls = ctx.state.urls(tenant)
    claims: dict[str, Any] = {
        "iss": urls.issuer,
        "aud": grant.client_id,
        "sub": grant.patient_id,
        "iat": now,
        "exp": now + tenant.policy.access_token_lifetime,
    }
    if "fhirUser" in scopes:
        claims["fhirUser"] = f"{urls.fhir_base}/Patient/{grant.patient_id}"
    if nonce is not None:
        claims["nonce"] = nonce
    return claims


def _revoke_handler(ctx: AuthContext, vendor: Vendor) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        tenant = resolve_tenant(request, ctx.state, vendor)
        fault = await _token_fault(ctx, request, tenant, target="revoke")
        if fault is not None:
            return fault
        form = await _form(request)
        try:
            client = await _authenticate(ctx, request, tenant, form)
        except ClientAuthError as exc:
            return _client_error(ctx, tenant, form, exc)
        token = form.get("token")
        if not token:
            error = TokenError("invalid_request", "token is required")
            return _error_response(ctx, tenant, client.client_id, error)
        revoke_token(ctx, tenant, client, token)
        # RFC 7009 §2.2: 200 whether or not the token was valid.
        return web.Response(status=200, headers=NO_STORE)

    return handler


def revoke_token(
    ctx: AuthContext, tenant: TenantConfig, client: ClientRegistration, token: str
) -> None:
    """Revoke a refresh token (its whole grant) or a single access token of ``client``."""
    state = ctx.state
    grant_id = state.refresh_index.get(token) or state.retired_index.get(token)
    grant = state.grants.get(grant_id or "")
    if grant is not None:
        if grant.tenant_id == tenant.id and grant.client_id == client.client_id:
            revoke_grant(grant, "revoked by the client")
        return
    claims = state.read_access_token(token)
    if (
        claims is not None
        and claims.get("tenant") == tenant.id
        and claims.get("client_id") == client.client_id
        and isinstance(claims.get("jti"), str)
    ):
        state.revoked_access_tokens.add(claims["jti"])


def _introspect_handler(ctx: AuthContext, vendor: Vendor) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        tenant = resolve_tenant(request, ctx.state, vendor)
        form = await _form(request)
        try:
            await _authenticate(ctx, request, tenant, form)
        except ClientAuthError as exc:
            return _client_error(ctx, tenant, form, exc)
        return web.json_response(introspect(ctx, tenant, form.get("token", "")), headers=NO_STORE)

    return handler


def introspect(ctx: AuthContext, tenant: TenantConfig, token: str) -> dict[str, Any]:
    """RFC 7662 introspection with the SMART fields; ``{"active": false}`` for anything dead."""
    inactive: dict[str, Any] = {"active": False}
    if not token:
        return inactive
    state = ctx.state
    grant = state.grants.get(state.refresh_index.get(token, ""))
    if grant is not None:
        return _introspect_refresh(ctx, tenant, grant) or inactive
    claims = state.read_access_token(token)
    if claims is None or not access_token_active(ctx, tenant, claims):
        return inactive
    scope = str(claims.get("scope", ""))
    answer: dict[str, Any] = {
        "active": True,
        "token_type": "Bearer",
        "scope": scope,
        "client_id": claims.get("client_id"),
        "exp": claims.get("exp"),
        "iat": claims.get("iat"),
        "iss": claims.get("iss"),
        "aud": claims.get("aud"),
        "sub": claims.get("sub"),
        "patient": claims.get("patient"),
    }
    if "fhirUser" in scope.split():
        answer["fhirUser"] = f"{state.urls(tenant).fhir_base}/Patient/{claims.get('patient')}"
    return answer


def access_token_active(ctx: AuthContext, tenant: TenantConfig, claims: Mapping[str, Any]) -> bool:
    """Whether a verified access token of ``tenant`` is unexpired and unrevoked."""
    state = ctx.state
    exp = claims.get("exp")
    if claims.get("tenant") != tenant.id or not isinstance(exp, int | float):
        return False
    if exp <= state.now() or claims.get("jti") in state.revoked_access_tokens:
        return False
    grant = state.grants.get(str(claims.get("gid", "")))
    return grant is not None and not grant.revoked


def _introspect_refresh(
    ctx: AuthContext, tenant: TenantConfig, grant: Grant
) -> dict[str, Any] | None:
    expires_at = grant.refresh_expires_at
    if grant.revoked or grant.tenant_id != tenant.id:
        return None
    if expires_at is not None and ctx.state.now() > expires_at:
        return None
    answer: dict[str, Any] = {
        "active": True,
        "token_type": "refresh_token",
        "scope": returned_scope(grant.scopes, tenant.policy),
        "client_id": grant.client_id,
        "sub": grant.patient_id,
        "patient": grant.patient_id,
    }
    if expires_at is not None:
        answer["exp"] = int(expires_at)
    return answer
