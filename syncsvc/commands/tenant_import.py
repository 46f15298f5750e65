"""``syncsvc tenants import``: create or update tenants from a User-access Brands or Oracle Health
endpoint bundle, idempotently."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from syncsvc.directory.endpoint_import import ImportReport
    from syncsvc.directory.logo_import import LogoReport
    from syncsvc.services import Services
    from syncsvc.settings import Settings


def import_tenants(args: argparse.Namespace) -> int:
    """``tenants import FILE``: create or update a tenant per endpoint of a bundle."""
    from syncsvc.directory.endpoint_import import read_endpoint_file
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
    directory = directory_of(args.directory, report.format)
    if directory is None:
        return fail(
            "tenants import",
            "a brands bundle needs --directory NAME: the name says which tenants a re-import of "
            "this file may delist, so two brands bundles must not share one",
            EXIT_USAGE,
        )
    run = _Import(args, settings, report, directory)
    with failing_as("tenants import"):
        asyncio.run(run.run())
    for reason in run.report.skipped:
        print(f"  skipped: {reason}", file=sys.stderr)
    if args.json:
        print_json(
            {
                "format": report.format,
                "imported": run.done,
                "skipped": list(report.skipped),
                "logos": None if run.logos is None else run.logos.to_json(),
            }
        )
    else:
        print(f"imported {run.done} tenants, skipped {len(report.skipped)}")
    return 0 if run.done or not report.endpoints else EXIT_FAILED


class _Import:
    """One import: register each endpoint's tenant, fetch the logos, delist what left."""

    def __init__(
        self, args: argparse.Namespace, settings: Settings, report: ImportReport, directory: str
    ) -> None:
        self.args = args
        self.settings = settings
        self.report = report
        self.directory = directory
        self.done = 0
        self.logos: LogoReport | None = None

    async def run(self) -> None:
        from syncsvc.db import repo
        from syncsvc.directory.endpoint_import import named
        from syncsvc.services import Services

        async with Services(self.settings, require_schema=True) as services:
            total = len(self.report.endpoints)
            print(
                f"{self.args.file}: {self.report.format} bundle, {total} endpoints", file=sys.stderr
            )
            async with services.sessionmaker() as session:
                # Matched by FHIR base: a renamed organisation updates its tenant.
                self.report = named(self.report, await repo.tenant_names_by_base(session))
            await self._register(services)
            if not self.done:
                return  # an empty or unreadable list delists nothing: it says nothing of what left
            if self.args.logos:
                await self._fetch_logos(services)
            await self._delist(services)

    async def _register(self, services: Services) -> None:
        from syncsvc.directory.picker import listing_of
        from syncsvc.directory.tenants import TenantSpec, register_tenant
        from syncsvc.smart.mixup import redirect_uri_from_template

        args, total = self.args, len(self.report.endpoints)
        for endpoint in self.report.endpoints:
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
                public_url=public_url_of(self.settings),
                listing=listing_of(endpoint, self.directory),
            )
            self.done += 1
            if self.done % 50 == 0 or self.done == total:
                print(
                    f"  {self.done}/{total} tenants created or updated", file=sys.stderr, flush=True
                )

    async def _fetch_logos(self, services: Services) -> None:
        from syncsvc.directory.logo_import import import_logos
        from syncsvc.directory.logos import LogoFetcher

        self.logos = await import_logos(
            services.sessionmaker,
            LogoFetcher(services.http, allow_loopback=self.args.allow_loopback),
            self.report.endpoints,
            now=dt.datetime.now(dt.UTC),
        )
        _say_logos(self.logos)

    async def _delist(self, services: Services) -> None:
        from syncsvc.directory.picker import delist_missing

        delisted = await delist_missing(
            services.sessionmaker,
            self.directory,
            [e.name for e in self.report.endpoints],
            now=dt.datetime.now(dt.UTC),
        )
        if delisted:
            print(f"  {delisted} tenants no longer listed: delisted", file=sys.stderr)


def _say_logos(logos: LogoReport) -> None:
    """The logo step's lines: what was stored, and each refusal with the tenants it concerns."""
    print(
        f"  logos: {logos.shown} tenants show one ({logos.fetched} fetched, {logos.stored} new, "
        f"{logos.deleted} no longer shown deleted)",
        file=sys.stderr,
    )
    for failure in logos.failures:
        names = ", ".join(failure.tenants[:3])
        more = len(failure.tenants) - 3
        who = f"{names} and {more} more" if more > 0 else names
        kept = "; the logo fetched before is kept" if failure.kept else ""
        print(f"  logo refused for {who}: {failure.reason}{kept}", file=sys.stderr)


#: Both Oracle Health shapes are one publisher's one list: the directory needs no name.
ORACLE_DIRECTORY = "oracle-health"
DIRECTORY_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def directory_of(given: str | None, fmt: str) -> str | None:
    """Which directory an import is: ``--directory``, else Oracle Health's; None for a brands
    bundle without a name (any default would let one brands bundle delist another's tenants)."""
    if given is not None:
        return given
    return ORACLE_DIRECTORY if fmt != "brands" else None


def _directory_name(value: str) -> str:
    if not DIRECTORY_NAME.fullmatch(value):
        raise argparse.ArgumentTypeError(
            "use 1 to 64 lower-case letters, digits, '.', '_' and '-' (e.g. 'epic-brands')"
        )
    return value


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
        examples=(
            "syncsvc tenants import oracle.json --client-id CLIENT",
            "syncsvc tenants import brands.json --client-id CLIENT --directory epic-brands",
        ),
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
        type=_directory_name,
        help="which directory this file is: tenants it listed before and no longer lists are "
        "delisted (kept, not offered to patients); required for a brands bundle (one name per "
        "publisher's bundle), default 'oracle-health' for Oracle Health's list",
    )
    imports.add_argument(
        "--no-logos",
        dest="logos",
        action="store_false",
        help="do not fetch the brands' logos (stored ones are kept as they are); by default each "
        "is fetched once (https, PNG/JPEG/WebP/GIF, at most 256 KB) and served by syncsvc",
    )
    imports.add_argument("--discover", action="store_true", help="run discovery for each now")
    imports.add_argument("--json", action="store_true", help="print the result as JSON")
    imports.set_defaults(handler=import_tenants)
