"""``syncsvc tenants add|list|show|remove|import``: the EHR FHIR bases syncsvc connects to."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from syncsvc.commands.common import (
    EXIT_USAGE,
    Commands,
    add_command,
    database,
    fail,
    failing_as,
    load_settings,
    print_json,
)
from syncsvc.commands.tenant_import import add_import
from syncsvc.commands.tenant_options import (
    AUTH_METHODS,
    SCOPE_SYNTAX_CHOICES,
    VENDORS,
    client_secret_of,
    public_url_of,
    tenant_name,
)

if TYPE_CHECKING:
    from syncsvc.db.models.connections import Tenant
    from syncsvc.directory.tenants import TenantSpec
    from syncsvc.settings import Settings


def tenant_summary(tenant: Tenant, connections: int | None = None) -> dict[str, Any]:
    """What an operator sees of a tenant (never a secret: only whether one is set)."""
    from syncsvc.smart.mixup import callback_tenant_of

    endpoints = tenant.endpoints or {}
    summary: dict[str, Any] = {
        "name": tenant.name,
        "display_name": tenant.display_name,
        "vendor": tenant.vendor,
        "fhir_base": tenant.fhir_base,
        "issuer": tenant.issuer,
        "client_id": tenant.client_id,
        "auth_method": tenant.auth_method,
        "client_secret_set": tenant.client_secret_enc is not None,
        "private_key_set": tenant.private_key_enc is not None,
        "key_id": tenant.key_id,
        "redirect_uri": tenant.redirect_uri,
        # Not the tenant's own /callback/NAME: only iss protects it from a mix-up (SECURITY.md).
        "redirect_uri_shared": callback_tenant_of(tenant.redirect_uri) != tenant.name,
        "resource_types": list(tenant.configured_scopes),
        "plan_overrides": tenant.plan_overrides,
        "scope_syntax": tenant.scope_syntax,
        "scope_syntax_asked": _syntax_asked(tenant),
        "discovery": {
            "source": endpoints.get("source"),
            "authorization_endpoint": endpoints.get("authorization_endpoint"),
            "token_endpoint": endpoints.get("token_endpoint"),
            "revocation_endpoint": endpoints.get("revocation_endpoint"),
            "capabilities": list(tenant.capabilities or []),
            "scopes_supported": tenant.scopes_supported,
            "fetched_at": tenant.discovery_fetched_at,
            "last_error": tenant.discovery_error,
        },
    }
    if connections is not None:
        summary["connections"] = connections
    return summary


def _syntax_asked(tenant: Tenant) -> str | None:
    """The scope syntax a launch asks in now (None until discovery ran)."""
    from syncsvc.smart.scopes import preferred_syntax
    from syncsvc.sync.tenant_config import smart_configuration

    config = smart_configuration(tenant)
    return None if config is None else preferred_syntax(config, tenant.scope_syntax)


def _print_tenant(summary: dict[str, Any]) -> None:
    discovery = summary["discovery"]
    print(f"{summary['name']}: {summary['display_name']} ({summary['vendor']})")
    print(f"  FHIR base       {summary['fhir_base']}")
    print(f"  client          {summary['client_id']} ({summary['auth_method']})")
    redirect = summary["redirect_uri"]
    shared = "  (shared: see SECURITY.md to move it)" if summary["redirect_uri_shared"] else ""
    follows = " (after the public URL: SYNCSVC_PUBLIC_URL or serve's own)"
    print(f"  redirect URI    {redirect}{follows if redirect.startswith('/') else ''}{shared}")
    print(f"  resource types  {', '.join(summary['resource_types'])}")
    asked = summary["scope_syntax_asked"]
    now = f" (asks in {asked})" if asked is not None and summary["scope_syntax"] == "auto" else ""
    print(f"  scope syntax    {summary['scope_syntax']}{now}")
    if discovery["source"]:
        print(
            f"  discovered from {discovery['source']} at {discovery['fetched_at']:%Y-%m-%d %H:%M}Z"
        )
        print(f"  authorize       {discovery['authorization_endpoint']}")
        print(f"  token           {discovery['token_endpoint']}")
        print(f"  revoke          {discovery['revocation_endpoint'] or '(not offered)'}")
        scopes = discovery["scopes_supported"]
        print(f"  scopes offered  {len(scopes) if scopes is not None else 'not advertised'}")
    else:
        print("  discovery       not yet run (the first launch discovers it)")
    if discovery["last_error"]:
        print(f"  last discovery error: {discovery['last_error']}")
    if "connections" in summary:
        print(f"  connections     {summary['connections']}")


async def _register(settings: Settings, spec: TenantSpec) -> Tenant:
    from syncsvc.directory.tenants import register_tenant
    from syncsvc.services import Services

    async with Services(settings, require_schema=True) as services:
        return await register_tenant(
            services.sessionmaker,
            services.vault,
            services.http,
            spec,
            now=dt.datetime.now(dt.UTC),
            run_discovery=True,
            public_url=public_url_of(settings),
        )


def _add(args: argparse.Namespace) -> int:
    from syncsvc.directory.tenants import TenantSpec

    settings = load_settings("tenants add")
    if settings is None:
        return EXIT_USAGE
    try:
        private_key = args.private_key.read_text(encoding="utf-8") if args.private_key else None
        plans = json.loads(args.plans.read_text(encoding="utf-8")) if args.plans else None
        args.client_secret = client_secret_of(args)
    except OSError as exc:
        return fail("tenants add", f"cannot read {exc.filename}: {exc.strerror}", EXIT_USAGE)
    except ValueError as exc:
        return fail("tenants add", f"{args.plans} is not valid JSON: {exc}", EXIT_USAGE)
    auth = args.auth_method or (
        "private_key_jwt"
        if private_key
        else "client_secret_basic"
        if args.client_secret
        else "public"
    )
    with failing_as("tenants add"):
        spec = TenantSpec(
            name=args.name,
            display_name=args.display_name,
            fhir_base=args.base,
            client_id=args.client_id,
            vendor=args.vendor,
            auth_method=auth,
            client_secret=args.client_secret,
            private_key_pem=private_key,
            key_id=args.key_id,
            redirect_uri=args.redirect_uri,
            resource_types=tuple(args.scopes) if args.scopes else None,
            plan_overrides=plans,
            scope_syntax=args.scope_syntax,
        )
        tenant = asyncio.run(_register(settings, spec))
    summary = tenant_summary(tenant)
    warnings = _warn_about_discovery(tenant)
    for warning in warnings:
        print(f"tenants add: warning: {warning}", file=sys.stderr)
    if args.json:
        print_json({**summary, "warnings": warnings})
    else:
        print(f"registered tenant '{tenant.name}'; discovery succeeded:")
        _print_tenant(summary)
    return 0


async def _check(settings: Settings, name: str) -> dict[str, Any] | None:
    from syncsvc.db import repo
    from syncsvc.health.report import tenant_health

    async with database(settings) as sessionmaker, sessionmaker() as session:
        tenant = await repo.get_tenant_by_name(session, name)
        if tenant is None:
            return None
        report = await tenant_health(session, tenant, dt.datetime.now(dt.UTC))
    body = report.to_json()
    return {
        "tenant": body["tenant"],
        "status": body["status"],
        "rule": body["rule"],
        "findings": body["findings"],
        "launch_failures": body["launch_failures"],
        "connections": body["connections"],
    }


def _check_cmd(args: argparse.Namespace) -> int:
    settings = load_settings("tenants check")
    if settings is None:
        return EXIT_USAGE
    result = asyncio.run(_check(settings, args.name))
    if result is None:
        return fail("tenants check", f"no tenant named '{args.name}'")
    if args.json:
        print_json(result)
        return 0
    rule = result["rule"]
    print(f"{result['tenant']}: {result['status']} ({rule['id']}: {rule['reason']})")
    if not result["findings"]:
        print("  no likely cause found: nothing in discovery, grants or launches stands out")
    for finding in result["findings"]:
        print(f"  - [{finding['id']}] {finding['message']}")
    return 0


def _warn_about_discovery(tenant: Tenant) -> list[str]:
    """The discovery findings ``tenants add`` warns about at once."""
    from syncsvc.directory.diagnosis import discovery_findings

    found = discovery_findings(
        tenant.display_name, tenant.scopes_supported, list(tenant.capabilities or [])
    )
    return [f"[{f.id}] {f.message}" for f in found]


async def _load(settings: Settings, name: str | None) -> list[tuple[Tenant, int]]:
    from syncsvc.db import repo

    async with database(settings) as sessionmaker, sessionmaker() as session:
        tenants = await repo.list_tenants(session)
        if name is not None:
            tenants = [t for t in tenants if t.name == name]
        return [(t, len(await repo.list_connections(session, tenant_id=t.id))) for t in tenants]


def _list(args: argparse.Namespace) -> int:
    settings = load_settings("tenants list")
    if settings is None:
        return EXIT_USAGE
    rows = asyncio.run(_load(settings, None))
    if args.json:
        print_json([tenant_summary(t, count) for t, count in rows])
        return 0
    if not rows:
        print("no tenants yet: add one with `syncsvc tenants add` or `syncsvc tenants import`")
    for tenant, count in rows:
        print(f"{tenant.name}\t{tenant.vendor}\t{count} connections\t{tenant.fhir_base}")
    return 0


def _show(args: argparse.Namespace) -> int:
    settings = load_settings("tenants show")
    if settings is None:
        return EXIT_USAGE
    rows = asyncio.run(_load(settings, args.name))
    if not rows:
        return fail("tenants show", f"no tenant named '{args.name}'")
    tenant, count = rows[0]
    if args.json:
        print_json(tenant_summary(tenant, count))
    else:
        _print_tenant(tenant_summary(tenant, count))
    return 0


async def _set(settings: Settings, name: str, changes: dict[str, Any]) -> Tenant | None:
    from syncsvc.db import repo

    async with database(settings) as sessionmaker, sessionmaker.begin() as session:
        tenant = await repo.get_tenant_by_name(session, name)
        if tenant is None:
            return None
        return await repo.update_tenant(session, tenant.id, now=dt.datetime.now(dt.UTC), **changes)


def _set_cmd(args: argparse.Namespace) -> int:
    settings = load_settings("tenants set")
    if settings is None:
        return EXIT_USAGE
    tenant = asyncio.run(_set(settings, args.name, {"scope_syntax": args.scope_syntax}))
    if tenant is None:
        return fail("tenants set", f"no tenant named '{args.name}'")
    summary = tenant_summary(tenant)
    if args.json:
        print_json(summary)
    else:
        print(f"updated tenant '{tenant.name}':")
        _print_tenant(summary)
    return 0


async def _remove(settings: Settings, name: str, *, force: bool) -> str | None:
    from syncsvc.db import repo

    async with database(settings) as sessionmaker, sessionmaker.begin() as session:
        tenant = await repo.get_tenant_by_name(session, name)
        if tenant is None:
            return f"no tenant named '{name}'"
        connections = await repo.list_connections(session, tenant_id=tenant.id)
        if connections and not force:
            return (
                f"tenant '{name}' has {len(connections)} connections; disconnect them first or "
                "pass --force to delete them with their tokens and data"
            )
        for connection in connections:
            await repo.delete_connection(session, connection.id)
        await repo.delete_tenant(session, tenant.id)
    return None


def _remove_cmd(args: argparse.Namespace) -> int:
    settings = load_settings("tenants remove")
    if settings is None:
        return EXIT_USAGE
    problem = asyncio.run(_remove(settings, args.name, force=args.force))
    if problem is not None:
        return fail("tenants remove", problem)
    print(f"removed tenant '{args.name}'")
    return 0


def add_to(commands: Commands) -> None:
    """Register ``tenants``."""
    tenants = commands.add_parser(
        "tenants",
        help="EHR tenants: add, set, list, show, check, remove, import",
        description=(
            "A tenant is one EHR FHIR base with syncsvc's client registration there. Its name "
            "(lower-case letters, digits and hyphens) appears in links, commands and metrics."
        ),
    )
    actions = tenants.add_subparsers(dest="tenants_command", required=True, metavar="ACTION")

    add = add_command(
        actions,
        "add",
        summary="register a FHIR base with syncsvc's client there (runs discovery)",
        description=(
            "Register a tenant, or update the tenant of that name. Discovery (SMART "
            ".well-known, then the CapabilityStatement) runs at once and its result is shown; "
            "an unreachable or non-SMART base fails with the reason (exit 1)."
        ),
        examples=(
            "syncsvc tenants add --name clinic --base https://fhir.example.org/r4/TENANT "
            "--client-id CLIENT --client-secret-file secret.txt --vendor cerner",
        ),
    )
    add.add_argument(
        "--name",
        required=True,
        type=tenant_name,
        help="short handle used in links and commands: [a-z0-9][a-z0-9-]{0,62}",
    )
    add.add_argument("--base", required=True, help="the FHIR base URL (also the aud)")
    add.add_argument("--client-id", required=True, help="syncsvc's client id at this EHR")
    secret = add.add_mutually_exclusive_group()
    secret.add_argument(
        "--client-secret", help="for client_secret_basic/_post (visible to `ps`: prefer the file)"
    )
    secret.add_argument("--client-secret-file", type=Path, help="file holding the client secret")
    secret.add_argument("--private-key", type=Path, help="PEM file, for private_key_jwt")
    add.add_argument("--key-id", help="kid of the private key in the served JWKS")
    add.add_argument(
        "--auth-method",
        choices=AUTH_METHODS,
        help="client authentication (default: private_key_jwt with --private-key, "
        "client_secret_basic with a secret, else public)",
    )
    add.add_argument("--vendor", choices=VENDORS, default="generic", help="EHR vendor profile")
    add.add_argument("--display-name", help="the name patients see (default: --name)")
    add.add_argument(
        "--redirect-uri",
        help=(
            "default: the tenant's stored one, else SYNCSVC_PUBLIC_URL + /callback/NAME "
            "(see SECURITY.md on the shared /callback)"
        ),
    )
    add.add_argument(
        "--scopes",
        nargs="+",
        metavar="TYPE",
        help="resource types to request (default: the tenant's stored list, or for a new tenant "
        "every US Core patient type; types its server does not offer show as unsupported)",
    )
    add.add_argument(
        "--plans",
        type=Path,
        metavar="FILE",
        help='JSON query plan overrides, e.g. {"Observation": {"count": 50}}',
    )
    add.add_argument(
        "--scope-syntax",
        choices=SCOPE_SYNTAX_CHOICES,
        help="SMART scopes to ask in: auto (v2 where the server advertises permission-v2, "
        "else v1), v1 or v2 (default: the stored choice, else auto)",
    )
    add.add_argument("--json", action="store_true", help="print the result as JSON")
    add.set_defaults(handler=_add)

    setting = add_command(
        actions,
        "set",
        summary="change one of a tenant's options (no discovery, no other change)",
        description=(
            "Change options of a registered tenant. New launches use them; connections "
            "already made keep the grant they have until they reconnect."
        ),
        examples=("syncsvc tenants set clinic --scope-syntax v1",),
    )
    setting.add_argument("name", help="the tenant name")
    setting.add_argument(
        "--scope-syntax",
        required=True,
        choices=SCOPE_SYNTAX_CHOICES,
        help="SMART scopes to ask in: auto (v2 where the server advertises permission-v2, "
        "else v1), v1 or v2",
    )
    setting.add_argument("--json", action="store_true", help="print the result as JSON")
    setting.set_defaults(handler=_set_cmd)

    listing = add_command(
        actions,
        "list",
        summary="every tenant with its connection count",
        description="List the tenants: name, vendor, connections, FHIR base.",
        examples=("syncsvc tenants list", "syncsvc tenants list --json"),
    )
    listing.add_argument("--json", action="store_true", help="print the result as JSON")
    listing.set_defaults(handler=_list)

    show = add_command(
        actions,
        "show",
        summary="one tenant with its discovery result",
        description="Show a tenant's client, redirect URI, resource types and discovered "
        "endpoints (never a secret: only whether one is set).",
        examples=("syncsvc tenants show clinic",),
    )
    show.add_argument("name", help="the tenant name")
    show.add_argument("--json", action="store_true", help="print the result as JSON")
    show.set_defaults(handler=_show)

    check = add_command(
        actions,
        "check",
        summary="explain a tenant's likely problems in plain words",
        description=(
            "Reads discovery, the scopes requested and granted per connection (here and at "
            "other tenants with the same client), failed launches and misbound grants, and "
            "names the likely causes. Tenant health lists the same findings."
        ),
        examples=("syncsvc tenants check clinic",),
    )
    check.add_argument("name", help="the tenant name")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.set_defaults(handler=_check_cmd)

    remove = add_command(
        actions,
        "remove",
        summary="delete a tenant",
        description="Delete a tenant that has no connections (with --force: and its "
        "connections, their tokens and data).",
        examples=("syncsvc tenants remove clinic",),
    )
    remove.add_argument("name", help="the tenant name")
    remove.add_argument(
        "--force", action="store_true", help="also delete its connections, tokens and data"
    )
    remove.set_defaults(handler=_remove_cmd)

    add_import(actions)
