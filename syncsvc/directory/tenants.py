"""Tenants: registering an EHR FHIR base with syncsvc's client there, and keeping discovery fresh.

Registration runs discovery first, so a typo in a base URL is an error at ``tenants add`` time,
not at a patient's first launch. Client secrets and private keys are encrypted under the vault,
bound to the tenant row. Registering a name again updates that tenant (``tenants import`` relies
on this being idempotent).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db import repo, search_repo
from syncsvc.db.columns import new_id
from syncsvc.db.models.connections import AUTH_METHOD_NAMES, SCOPE_SYNTAXES, VENDORS, Tenant
from syncsvc.errors import ConfigError, DiscoveryError
from syncsvc.fhir.plans import plan_for
from syncsvc.netguard import endpoint_problem, is_loopback_host
from syncsvc.smart.discovery import (
    SmartConfiguration,
    configuration_problem,
    discover,
    normalise_base,
)
from syncsvc.smart.mixup import callback_tenant_of, tenant_callback_uri
from syncsvc.smart.scopes import DEFAULT_RESOURCE_TYPES
from syncsvc.sync.tenant_config import smart_configuration
from syncsvc.vault import Purpose, Vault

#: Re-discover a tenant's endpoints when the stored document is older than this.
DISCOVERY_TTL = dt.timedelta(hours=24)


#: Tenant names appear in links, commands, metric labels and log lines: a short, plain slug.
TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def check_tenant_name(name: str) -> str:
    """``name`` if it is a valid tenant name, else ConfigError saying what a name looks like."""
    if not TENANT_NAME.fullmatch(name):
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise ConfigError(
            f"tenant name {shown!r} is not valid: use 1 to 63 lower-case letters, digits and "
            "hyphens, starting with a letter or digit (e.g. 'clinic' or 'st-mary-r4')"
        )
    return name


@dataclass(frozen=True)
class TenantSpec:
    """What an operator says about a tenant; the rest is discovered."""

    name: str
    fhir_base: str
    client_id: str
    #: ``None``: keep the tenant's stored redirect URI, or give a new tenant its own
    #: ``/callback/{name}`` (see :mod:`syncsvc.smart.mixup`).
    redirect_uri: str | None
    display_name: str | None = None
    vendor: str = "generic"
    auth_method: str = "public"
    client_secret: str | None = field(default=None, repr=False)
    private_key_pem: str | None = field(default=None, repr=False)
    key_id: str | None = None
    #: ``None``: keep the types stored for the tenant, or give a new tenant today's default. A
    #: tenant registered again (``tenants import`` re-reading its directory, say) never has its
    #: list widened to a newer release's default behind the operator's back.
    resource_types: tuple[str, ...] | None = None
    #: Changes to the vendor's query plans at this tenant (see ``syncsvc.fhir.plans.plan_for``).
    plan_overrides: dict[str, dict[str, object]] | None = None
    #: The SMART scope syntax to ask in (``auto``, ``v1``, ``v2``); None keeps the stored one
    #: (``auto`` for a new tenant).
    scope_syntax: str | None = None

    def __post_init__(self) -> None:
        check_tenant_name(self.name)
        if self.scope_syntax is not None and self.scope_syntax not in SCOPE_SYNTAXES:
            raise ConfigError(f"scope syntax must be one of {', '.join(SCOPE_SYNTAXES)}")
        if self.vendor not in VENDORS:
            raise ConfigError(f"vendor must be one of {', '.join(VENDORS)}")
        if self.auth_method not in AUTH_METHOD_NAMES:
            raise ConfigError(f"auth method must be one of {', '.join(AUTH_METHOD_NAMES)}")
        needs_secret = self.auth_method in ("client_secret_basic", "client_secret_post")
        if needs_secret and not self.client_secret:
            raise ConfigError(f"auth method {self.auth_method} needs a client secret")
        if self.auth_method == "private_key_jwt" and not self.private_key_pem:
            raise ConfigError("auth method private_key_jwt needs a private key")
        if not self.client_id:
            raise ConfigError("A client id is required.")
        if self.plan_overrides is not None:
            validate_plan_overrides(self.plan_overrides, self.vendor)


@dataclass(frozen=True)
class Listing:
    """What a published directory says about a tenant, for the patient's provider search."""

    #: Which directory listed it; a re-import of that directory delists the tenants it drops.
    directory: str
    street: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    aliases: tuple[str, ...] = ()
    brand_name: str | None = None
    portal_name: str | None = None

    def columns(self) -> dict[str, object]:
        """The tenant columns this listing sets (listing it again ends a delisting)."""
        return {
            "directory": self.directory,
            "street": self.street,
            "city": self.city,
            "state": self.state,
            "postal_code": self.postal_code,
            "aliases": list(self.aliases),
            "brand_name": self.brand_name,
            "portal_name": self.portal_name,
            "delisted_at": None,
        }


def validate_plan_overrides(overrides: object, vendor: str) -> None:
    """ConfigError unless ``overrides`` is ``{type: {plan field: value}}`` that builds a plan."""
    if not isinstance(overrides, dict) or not all(
        isinstance(k, str) and isinstance(v, dict) for k, v in overrides.items()
    ):
        raise ConfigError("plan overrides must be a JSON object of {resource type: {field: value}}")
    try:
        plan_for(vendor, overrides)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"plan overrides are not valid: {exc}") from exc


def redirect_uri_of(tenant: Tenant, public_url: str) -> str:
    """The redirect URI of ``tenant`` as sent to its EHR.

    A tenant registered while no public URL was set stores only the path (``/callback/NAME``):
    it follows the public URL of the process that launches, so ``serve --port P`` sends
    redirect URIs on P.
    """
    stored = tenant.redirect_uri
    return f"{public_url.rstrip('/')}{stored}" if stored.startswith("/") else stored


def _discovery_columns(config: SmartConfiguration, now: dt.datetime) -> dict[str, object]:
    return {
        "issuer": config.issuer,
        "endpoints": config.to_json(),
        "capabilities": list(config.capabilities),
        "scopes_supported": None
        if config.scopes_supported is None
        else list(config.scopes_supported),
        "discovery_fetched_at": now,
        "discovery_error": None,
    }


async def register_tenant(
    sessionmaker: async_sessionmaker[AsyncSession],
    vault: Vault,
    http: aiohttp.ClientSession,
    spec: TenantSpec,
    *,
    now: dt.datetime,
    run_discovery: bool = True,
    public_url: str | None = None,
    listing: Listing | None = None,
) -> Tenant:
    """Discover ``spec.fhir_base`` and create or update the tenant named ``spec.name``.

    DiscoveryError if the base publishes no usable SMART configuration; nothing is stored then.
    ``run_discovery=False`` (bulk imports) stores the tenant undiscovered, keeping any earlier
    discovery result; the first launch discovers it then. A spec without a redirect URI keeps
    the stored one (an EHR registration holding it keeps working) or, for a new tenant, gets
    ``{public_url}/callback/{name}``. A ``listing`` (from ``tenants import``) replaces what the
    patient's provider search knows of the tenant; without one the stored listing is kept.
    """
    base = normalise_base(spec.fhir_base)
    # Tokens travel to the base: in clear text only on this machine (the sandbox), and never
    # to a private or metadata address.
    problem = endpoint_problem(base, loopback_tenant=is_loopback_host(urlsplit(base).hostname))
    if problem is not None:
        raise ConfigError(f"The FHIR base {problem}: {base}")
    config = await discover(http, base) if run_discovery else None
    async with sessionmaker.begin() as session:
        existing = await repo.get_tenant_by_name(session, spec.name)
        other = await repo.get_tenant_by_base(session, base)
        if other is not None and (existing is None or other.id != existing.id):
            raise ConfigError(f"The FHIR base {base} is already registered as '{other.name}'.")
        tenant_id = existing.id if existing else new_id()
        redirect_uri = _redirect_uri(spec, existing, public_url)
        columns: dict[str, object] = {
            "display_name": spec.display_name or spec.name,
            "vendor": spec.vendor,
            "fhir_base": base,
            "client_id": spec.client_id,
            "auth_method": spec.auth_method,
            "client_secret_enc": _seal(vault, spec.client_secret, Purpose.CLIENT_SECRET, tenant_id),
            "private_key_enc": _seal(vault, spec.private_key_pem, Purpose.PRIVATE_KEY, tenant_id),
            "key_id": spec.key_id,
            "redirect_uri": redirect_uri,
            "configured_scopes": _resource_types(spec, existing),
            "plan_overrides": spec.plan_overrides,
        }
        if spec.scope_syntax is not None:
            columns["scope_syntax"] = spec.scope_syntax
        if config is not None:
            columns.update(_discovery_columns(config, now))
        if listing is not None:
            columns.update(listing.columns())
        if existing is None:
            tenant = await repo.create_tenant(
                session, id=tenant_id, name=spec.name, now=now, **columns
            )
        else:
            tenant = await repo.update_tenant(session, tenant_id, now=now, **columns)
        await search_repo.index_tenant(session, tenant)
        return tenant


def _resource_types(spec: TenantSpec, existing: Tenant | None) -> list[str]:
    if spec.resource_types is not None:
        return list(dict.fromkeys(spec.resource_types))
    if existing is not None and existing.configured_scopes:
        return list(existing.configured_scopes)
    return list(DEFAULT_RESOURCE_TYPES)


def _redirect_uri(spec: TenantSpec, existing: Tenant | None, public_url: str | None) -> str:
    if spec.redirect_uri:
        named = callback_tenant_of(spec.redirect_uri)
        if named is not None and named != spec.name:
            # Two tenants on one per-tenant callback would share it, undoing the mix-up check.
            raise ConfigError(
                f"The redirect URI {spec.redirect_uri} is tenant '{named}'s callback; tenant "
                f"'{spec.name}' uses its own (/callback/{spec.name}) or the shared /callback."
            )
        return spec.redirect_uri
    if existing is not None:
        return existing.redirect_uri
    if public_url is None:
        # No public URL chosen yet: the path alone, resolved against the public URL of the
        # process that launches (``serve`` on its own host and port, or the one set later).
        return tenant_callback_uri("", spec.name)
    return tenant_callback_uri(public_url, spec.name)


def _seal(vault: Vault, value: str | None, purpose: Purpose, row: str) -> str | None:
    return None if value is None else vault.encrypt(value, purpose=purpose, row=row)


async def fresh_configuration(
    sessionmaker: async_sessionmaker[AsyncSession],
    http: aiohttp.ClientSession,
    tenant: Tenant,
    *,
    now: dt.datetime,
    ttl: dt.timedelta = DISCOVERY_TTL,
) -> SmartConfiguration:
    """The tenant's configuration, re-discovered when stale.

    A failed re-discovery keeps the last good document (an EHR's metadata outage must not stop
    launches that would work) and records the failure for the health page; with no good
    document at all the DiscoveryError propagates.
    """
    stored = smart_configuration(tenant)
    if stored is not None and configuration_problem(stored) is not None:
        # Stored before the endpoint rules tightened: never used again, discovered afresh.
        stored = None
    fetched = tenant.discovery_fetched_at
    if stored is not None and fetched is not None and now - fetched < ttl:
        return stored
    try:
        config = await discover(http, tenant.fhir_base)
    except DiscoveryError as exc:
        async with sessionmaker.begin() as session:
            await repo.update_tenant(session, tenant.id, now=now, discovery_error=exc.message)
        if stored is None:
            raise
        return stored
    async with sessionmaker.begin() as session:
        await repo.update_tenant(session, tenant.id, now=now, **_discovery_columns(config, now))
    return config
