"""Vendor URL shapes of the sandbox.

Each vendor profile puts the FHIR base, the authorization server and its endpoints under different
paths, as the real products do, so that syncsvc cannot assume any of them and must discover all.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import TenantConfig, Vendor

#: Route templates per vendor. ``{tenant}`` and ``{host}`` are aiohttp path placeholders.
ROUTE_TEMPLATES: dict[Vendor, dict[str, str]] = {
    "cerner": {
        "fhir_base": "/r4/{tenant}",
        "authorize": (
            "/tenants/{tenant}/protocols/oauth2/profiles/smart-v1/personas/patient/authorize"
        ),
        "token": "/tenants/{tenant}/hosts/{host}/protocols/oauth2/profiles/smart-v1/token",
        "revoke": "/tenants/{tenant}/hosts/{host}/protocols/oauth2/profiles/smart-v1/token/revoke",
        "introspect": (
            "/tenants/{tenant}/hosts/{host}/protocols/oauth2/profiles/smart-v1/token/introspect"
        ),
        "jwks": "/tenants/{tenant}/protocols/oauth2/profiles/smart-v1/jwks",
        "issuer": "/tenants/{tenant}/protocols/oauth2/profiles/smart-v1",
        "errors": "/errors/{urn}/instances/{instance}",
    },
    "epic": {
        "fhir_base": "/epic/{tenant}/api/FHIR/R4",
        "authorize": "/epic/{tenant}/oauth2/authorize",
        "token": "/epic/{tenant}/oauth2/token",
        "revoke": "/epic/{tenant}/oauth2/revoke",
        "introspect": "/epic/{tenant}/oauth2/introspect",
        "jwks": "/epic/{tenant}/oauth2/jwks",
        "issuer": "/epic/{tenant}/oauth2",
        "errors": "/errors/{urn}/instances/{instance}",
    },
    "generic": {
        "fhir_base": "/fhir/{tenant}",
        "authorize": "/auth/{tenant}/authorize",
        "token": "/auth/{tenant}/token",
        "revoke": "/auth/{tenant}/revoke",
        "introspect": "/auth/{tenant}/introspect",
        "jwks": "/auth/{tenant}/jwks",
        "issuer": "/auth/{tenant}",
        "errors": "/errors/{urn}/instances/{instance}",
    },
}


@dataclass(frozen=True)
class TenantUrls:
    """The absolute URLs of one tenant, for an origin such as ``http://127.0.0.1:8765``."""

    fhir_base: str
    authorize: str
    token: str
    revoke: str
    introspect: str
    jwks: str
    issuer: str


def tenant_urls(origin: str, tenant: TenantConfig) -> TenantUrls:
    """Absolute URLs of a tenant under ``origin`` (no trailing slash on any of them)."""
    templates = ROUTE_TEMPLATES[tenant.vendor]

    def fill(name: str) -> str:
        return origin.rstrip("/") + templates[name].format(tenant=tenant.id, host=tenant.host)

    return TenantUrls(
        fhir_base=fill("fhir_base"),
        authorize=fill("authorize"),
        token=fill("token"),
        revoke=fill("revoke"),
        introspect=fill("introspect"),
        jwks=fill("jwks"),
        issuer=fill("issuer"),
    )
