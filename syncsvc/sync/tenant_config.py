"""What a stored tenant row says, read the way the sync engine and the lifecycle need it.

The resource types to pull, the stored discovery document, where a grant's tokens may be revoked
and the client registration with its secrets decrypted. Registering and discovering tenants is
:mod:`syncsvc.directory.tenants`; this module only reads what registration stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from syncsvc.db.models.connections import Tenant
from syncsvc.netguard import endpoint_problem, is_loopback_host
from syncsvc.smart.client_auth import ClientCredentials
from syncsvc.smart.discovery import SmartConfiguration
from syncsvc.smart.oauth import bound_revocation_endpoint
from syncsvc.smart.scopes import DEFAULT_RESOURCE_TYPES
from syncsvc.vault import Purpose, Vault


def resource_types_of(tenant: Tenant) -> Sequence[str]:
    """The resource types the operator configured for a tenant (stored when it was added)."""
    return tuple(tenant.configured_scopes) or DEFAULT_RESOURCE_TYPES


def smart_configuration(tenant: Tenant) -> SmartConfiguration | None:
    """The tenant's stored discovery result, or None if discovery never succeeded."""
    if not tenant.endpoints:
        return None
    return SmartConfiguration.from_json(dict(tenant.endpoints))


def revocation_endpoint(tenant: Tenant, token_endpoint: str) -> str | None:
    """Where a token of a grant issued at ``token_endpoint`` may be revoked, if anywhere.

    See :func:`~syncsvc.smart.oauth.bound_revocation_endpoint`: only on the token endpoint's host.
    The stored document may predate today's endpoint rules, so the endpoint is checked again
    here: one that :func:`revocation_endpoint_refusal` refuses is never returned.
    """
    advertised = (tenant.endpoints or {}).get("revocation_endpoint")
    endpoint = bound_revocation_endpoint(advertised, token_endpoint)
    if endpoint is None or revocation_endpoint_refusal(tenant, endpoint) is not None:
        return None
    return endpoint


def revocation_endpoint_refusal(tenant: Tenant, endpoint: str) -> str | None:
    """Why ``endpoint`` may not receive the tenant's tokens for revocation, or None if it may.

    The same rule as for every endpoint of a tenant (:func:`~syncsvc.netguard.endpoint_problem`):
    https on a public address, plain http on loopback only for a loopback tenant.
    """
    local = is_loopback_host(urlsplit(tenant.fhir_base).hostname)
    problem = endpoint_problem(endpoint, loopback_tenant=local)
    return None if problem is None else f"the revocation endpoint {problem}"


def revocation_endpoint_refused(tenant: Tenant, token_endpoint: str) -> str | None:
    """Why the revocation endpoint the tenant advertises for this grant is refused, or None
    (None also when it advertises none: that is "not offered", not refused)."""
    advertised = (tenant.endpoints or {}).get("revocation_endpoint")
    endpoint = bound_revocation_endpoint(advertised, token_endpoint)
    return None if endpoint is None else revocation_endpoint_refusal(tenant, endpoint)


def client_credentials(vault: Vault, tenant: Tenant) -> ClientCredentials:
    """The tenant's client registration with its secret material decrypted."""
    secret = (
        vault.decrypt(tenant.client_secret_enc, purpose=Purpose.CLIENT_SECRET, row=tenant.id)
        if tenant.client_secret_enc
        else None
    )
    private_key = (
        vault.decrypt(tenant.private_key_enc, purpose=Purpose.PRIVATE_KEY, row=tenant.id)
        if tenant.private_key_enc
        else None
    )
    return ClientCredentials(
        client_id=tenant.client_id,
        method=tenant.auth_method,  # type: ignore[arg-type]  # constrained by a CHECK
        secret=secret,
        private_key_pem=private_key,
        key_id=tenant.key_id,
    )
