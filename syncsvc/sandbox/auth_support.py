"""Pieces shared by the sandbox's authorize and token endpoints.

Tenant resolution per vendor URL shape, the Cerner-style error URNs with their ``error_uri``
instance pages, and :class:`AuthContext`, the authorization server's own bookkeeping.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

from aiohttp import web

from .client_auth import ClientAuthenticator
from .config import TenantConfig, Vendor
from .state import SandboxState

URN_PREFIX = "urn:cerner:error:authorization-server"
MISSING_PATIENT = f"{URN_PREFIX}:oauth2:grant:missing-patient"
INVALID_LAUNCH_CODE = f"{URN_PREFIX}:smart-v1:grant:launch:invalid-launch-code"
DENIED_BY_SERVER = f"{URN_PREFIX}:oauth2:grant:denied-by-server"
CLIENT_PERSONA_MISMATCH = f"{URN_PREFIX}:oauth2:grant:client-persona-mismatch"
EMPTY_SCOPES = f"{URN_PREFIX}:oauth2:token:empty-scopes"
INVALID_GRANT = f"{URN_PREFIX}:oauth2:token:invalid-grant"
THROTTLED = f"{URN_PREFIX}:oauth2:token:throttled"
INVALID_CLIENT = f"{URN_PREFIX}:oauth2:token:invalid-client"

#: What each URN means, shown on its error-instance page.
URN_EXPLANATIONS: dict[str, str] = {
    MISSING_PATIENT: (
        "The request asked for patient data but no patient context: request launch/patient "
        "together with patient/ scopes."
    ),
    INVALID_LAUNCH_CODE: (
        "The launch parameter does not name a launch this server issued. Standalone launches "
        "must not send a launch parameter."
    ),
    DENIED_BY_SERVER: "The authorization server does not allow this application at this tenant.",
    CLIENT_PERSONA_MISMATCH: (
        "The application is registered for another persona (provider) than the one it launched "
        "as (patient)."
    ),
    EMPTY_SCOPES: "None of the requested scopes may be granted to this application.",
    INVALID_GRANT: "The authorization code or refresh token is invalid, expired or revoked.",
    THROTTLED: "The refresh token was used again too soon; wait before refreshing.",
    INVALID_CLIENT: "Client authentication failed.",
}

#: Authorization codes live this long (RFC 6749 §4.1.2 recommends at most ten minutes).
CODE_LIFETIME = 60


@dataclass
class AuthContext:
    """The authorization server: shared state plus its own bookkeeping."""

    state: SandboxState
    authenticator: ClientAuthenticator
    #: Authorization code → the grant issued from it, so that a replayed code revokes that grant.
    code_grants: dict[str, str] = field(default_factory=dict)


def resolve_tenant(request: web.Request, state: SandboxState, vendor: Vendor) -> TenantConfig:
    """The tenant a request addresses in ``vendor``'s URL shape; 404 for any other."""
    tenant = state.tenant(request.match_info.get("tenant", ""))
    if tenant is None or tenant.vendor != vendor:
        raise web.HTTPNotFound
    host = request.match_info.get("host")
    if host is not None and host != tenant.host:
        raise web.HTTPNotFound
    return tenant


def error_uri(
    state: SandboxState, urn: str, *, client_id: str, tenant_id: str, persona: str = "patient"
) -> str:
    """A Cerner-style error instance URL naming ``urn`` (``persona``: the client's registration)."""
    query = urlencode({"persona": persona, "client": client_id, "tenant": tenant_id})
    return f"{state.origin}/errors/{quote(urn, safe='')}/instances/{uuid.uuid4()}?{query}"
