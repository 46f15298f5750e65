"""``syncsvc tenants import``: create or update tenants from a User-access Brands or Oracle Health
endpoint bundle, idempotently."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from pathlib import Path

from syncsvc.commands.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    Commands,
    add_command,
    fail,
    failing_as,
    load_settings,
    print_json,
)
from syncsvc.commands.tenant_options import AUTH_METHODS, client_secret_of, public_url_of


def import_tenants(args: argparse.Namespace) -> int:
    """``tenants import FILE``: create or update a tenant per endpoint of a bundle."""
    from syncsvc.directory.endpoint_import import read_endpoint_file
    from syncsvc.directory.tenants import TenantSpec
    from syncsvc.errors import SyncsvcError
    from syncsvc.smart.mixup import redirect_uri_from_template

    settings = load_settings("tenants import")
    if settings is None:
        return EXIT_USAGE
    try:
        if args.redirect_uri is not None:
            # Fail before reading anything: the template is the same for every tenant.
            redirect_uri_from_template(args.redirect_uri, "example")
        report = read_endpoint_file(args.file, allow_loopback=args.allow_loopback)
        args.client_secret = client_secret_of(args)
    except SyncsvcError as exc:
        return fail("tenants import", exc.message, EXIT_USAGE)
    except OSError as exc:
        return fail("tenants import", f"cannot read {exc.filename}: {exc.strerror}", EXIT_USAGE)
    total = len(report.endpoints)
    # Both Oracle Health shapes publish one directory; a brands bundle is its own unless named.
    directory = args.directory or ("oracle-health" if report.format != "brands" else "brands")

    async def run() -> int:
        from syncsvc.directory.picker import delist_missing, listing_of
        from syncsvc.directory.tenants import register_tenant
        from syncsvc.services import Services

        done = 0
        async with Services(settings, require_schema=True) as services:
            print(f"{args.file}: {report.format} bundle, {total} endpoints", file=sys.stderr)
            for endpoint in report.endpoints:
                spec = TenantSpec(
                    name=endpoint.name,
                    display_name=endpoint.display_name,
                    fhir_base=endpoint.fhir_base,
                    client_id=args.client_id,
                    vendor=endpoint.vendor,
                    auth_method=args.auth_method,
                    client_secret=args.client_secret,
                    redirect_uri=None
                    if args.redirect_uri is None
                    else redirect_uri_from_template(args.redirect_uri, endpoint.name),
                )
                await register_tenant(
                    services.sessionmaker,
                    services.vault,
                    services.http,
                    spec,
                    now=dt.datetime.now(dt.UTC),
                    run_discovery=args.discover,
                    public_url=public_url_of(settings),
                    listing=listing_of(endpoint, directory),
                )
                done += 1
                if done % 50 == 0 or done == total:
                    print(
                        f"  {done}/{total} tenants created or updated", file=sys.stderr, flush=True
                    )
            if done:
                # An empty or unreadable list delists nothing: it says nothing about what left.
                delisted = await delist_missing(
                    services.sessionmaker,
                    directory,
                    [e.name for e in report.endpoints],
                    now=dt.datetime.now(dt.UTC),
                )
                if delisted:
                    print(f"  {delisted} tenants no longer listed: delisted", file=sys.stderr)
        return done

    with failing_as("tenants import"):
        done = asyncio.run(run())
    for reason in report.skipped:
        print(f"  skipped: {reason}", file=sys.stderr)
    if args.json:
        print_json({"format": report.format, "imported": done, "skipped": list(report.skipped)})
    else:
        print(f"imported {done} tenants, skipped {len(report.skipped)}")
    return 0 if done or not total else EXIT_FAILED


def add_import(actions: Commands) -> None:
    """Register ``tenants import`` under the ``tenants`` command group."""
    imports = add_command(
        actions,
        "import",
        summary="create or update tenants from a User-access Brands or Oracle Health bundle",
        description=(
            "Idempotent: re-importing updates the same tenants (names derive from the bundle). "
            "Discovery runs at each tenant's first launch unless --discover is given."
        ),
        examples=("syncsvc tenants import brands.json --client-id CLIENT",),
    )
    imports.add_argument("file", type=Path, help="the bundle (JSON)")
    imports.add_argument("--client-id", required=True, help="syncsvc's client id at these EHRs")
    imports.add_argument(
        "--auth-method", choices=AUTH_METHODS[:3], default="public", help="client authentication"
    )
    import_secret = imports.add_mutually_exclusive_group()
    import_secret.add_argument("--client-secret", help="the client secret (prefer the file)")
    import_secret.add_argument(
        "--client-secret-file", type=Path, help="file holding the client secret"
    )
    imports.add_argument(
        "--redirect-uri",
        metavar="TEMPLATE",
        help="a template with {name}, e.g. https://sync.example/callback/{name}, giving each "
        "tenant its own callback; default: each tenant's stored one, else its own /callback/NAME",
    )
    imports.add_argument(
        "--allow-loopback",
        action="store_true",
        help="also import endpoints on this machine (127.0.0.1, localhost): development only",
    )
    imports.add_argument(
        "--directory",
        metavar="NAME",
        help="which directory this file is (default: 'oracle-health' or 'brands'); tenants it "
        "listed before and no longer lists are delisted (kept, not offered to patients)",
    )
    imports.add_argument("--discover", action="store_true", help="run discovery for each now")
    imports.add_argument("--json", action="store_true", help="print the result as JSON")
    imports.set_defaults(handler=import_tenants)
