"""Resource-server enforcement: who may read what, answered the way each vendor answers.

Checks run in a fixed order (token validity, revocation, tenant and host, scope), so a test can
provoke each answer on its own. The patient check happens in the FHIR handlers once they know which
patient a request is about; :func:`foreign_patient` gives its vendor-specific answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from aiohttp import web

from .config import TenantConfig
from .outcomes import operation_outcome
from .scopes import Operation, covers
from .state import Grant, SandboxState

TENANT_MISMATCH_DESCRIPTION = "Token is not valid for this tenant"
INSUFFICIENT_SCOPE_DESCRIPTION = "The access token does not grant access to this resource path"
# Oracle Health's documented answer to a token of another tenant, reproduced byte for byte.
TENANT_MISMATCH_BODY = (
    b'{"code":401,"message":"code=\\"urn:cerner:error:oauth2:resource-access:tenant-mismatch\\", '
    b'error=\\"invalid_token\\", error_description=\\"Token is not valid for this tenant\\""}'
)
# Oracle Health's answer when the token's scopes do not cover the resource path.
INSUFFICIENT_SCOPE_BODY = (
    b'{"code":403,"message":"code=\\"urn:cerner:error:oauth2:resource-access:insufficient-scopes'
    b'\\", error=\\"insufficient_scope\\", subcode=\\"no_scope_for_resource_path\\""}'
)


@dataclass(frozen=True)
class Access:
    """An authorized request: the tenant, the token's patient and scopes, and its grant."""

    tenant: TenantConfig
    patient_id: str | None
    scopes: list[str]
    grant: Grant
    claims: dict[str, object]


def bearer_token(request: web.Request) -> str | None:
    """The bearer token of the ``Authorization`` header, if any."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def authorize(
    request: web.Request,
    state: SandboxState,
    tenant: TenantConfig,
    resource_type: str,
    operation: Operation,
) -> Access | web.Response:
    """The request's access, or the vendor's error response."""
    token = bearer_token(request)
    if token is None:
        return invalid_token(tenant, "No bearer token was presented")
    claims = state.read_access_token(token)
    if claims is None:
        return invalid_token(tenant, "The access token could not be verified")
    exp = claims.get("exp")
    # RFC 7519 4.1.4: a token is refused "on or after" its exp.
    if not isinstance(exp, int | float) or isinstance(exp, bool) or exp <= state.now():
        return invalid_token(tenant, "The access token expired")
    grant = state.grants.get(str(claims.get("gid", "")))
    if grant is None or grant.revoked or claims.get("jti") in state.revoked_access_tokens:
        return invalid_token(tenant, "The access token was revoked")
    if claims.get("tenant") != tenant.id or claims.get("host") != tenant.host:
        return tenant_mismatch(tenant)
    scopes = _scopes(claims.get("scope"))
    if not covers(scopes, resource_type, operation):
        return insufficient_scope(tenant, f"patient/{resource_type}.read")
    grant.last_used_at = state.now()
    patient = claims.get("patient")
    return Access(tenant, patient if isinstance(patient, str) else None, scopes, grant, claims)


def _scopes(raw: object) -> list[str]:
    if isinstance(raw, str):
        return raw.split()
    if isinstance(raw, list):
        return [s for s in raw if isinstance(s, str)]
    return []


def _challenge(
    realm: str | None, error: str, description: str | None = None, scope: str | None = None
) -> str:
    parts = [f'realm="{realm}"'] if realm else []
    parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{description}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return "Bearer " + ", ".join(parts)


def invalid_token(tenant: TenantConfig, description: str) -> web.Response:
    """401 for a missing, forged, expired or revoked token."""
    headers = {"WWW-Authenticate": _challenge(tenant.host, "invalid_token", description)}
    if tenant.vendor == "epic":
        return web.Response(status=401, headers=headers)
    message = f'error="invalid_token", error_description="{description}"'
    body = orjson.dumps({"code": 401, "message": message})
    return web.Response(status=401, body=body, content_type="application/json", headers=headers)


def tenant_mismatch(tenant: TenantConfig) -> web.Response:
    """401 for a token issued for another tenant or host (every profile answers like Cerner)."""
    headers = {
        "WWW-Authenticate": _challenge(tenant.host, "invalid_token", TENANT_MISMATCH_DESCRIPTION)
    }
    return web.Response(
        status=401, body=TENANT_MISMATCH_BODY, content_type="application/json", headers=headers
    )


def insufficient_scope(tenant: TenantConfig, scope: str | None = None) -> web.Response:
    """403 when the token's scopes do not cover the requested type (``scope`` would)."""
    if tenant.vendor == "epic":
        # Epic answers with an empty body and only the challenge header.
        return web.Response(
            status=403, headers={"WWW-Authenticate": _challenge(None, "insufficient_scope")}
        )
    # Cerner sends the challenge (RFC 6750 section 3: error, description and the scope needed)
    # beside its JSON body.
    challenge = _challenge(
        tenant.host, "insufficient_scope", INSUFFICIENT_SCOPE_DESCRIPTION, scope=scope
    )
    return web.Response(
        status=403,
        body=INSUFFICIENT_SCOPE_BODY,
        content_type="application/json",
        headers={"WWW-Authenticate": challenge},
    )


def foreign_patient(tenant: TenantConfig) -> web.Response:
    """Another patient's data: 403 (Cerner, generic) or 404 (Epic hides that it exists)."""
    if tenant.vendor == "epic":
        return operation_outcome(404, "not-found", "Resource not found")
    return operation_outcome(403, "forbidden", "The token does not grant access to this patient")


def unknown_tenant() -> web.Response:
    """403 for a tenant id this server does not serve."""
    return operation_outcome(403, "forbidden", "Unknown tenant")
