"""``syncsvc connect-link``: a signed, single-use link a patient opens to connect their record."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt

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


def _connect_link(args: argparse.Namespace) -> int:
    from syncsvc.connect.links import IssuedLink, issue_connect_link
    from syncsvc.connect.signing import Signer

    settings = load_settings("connect-link")
    if settings is None:
        return EXIT_USAGE
    if settings.link_signing_key is None:
        return fail(
            "connect-link",
            "no link-signing key: run `syncsvc keys init` or set SYNCSVC_LINK_SIGNING_KEY",
            EXIT_USAGE,
        )
    signer = Signer(settings.link_signing_key.reveal())

    async def issue() -> IssuedLink:
        async with database(settings) as sessionmaker, sessionmaker.begin() as session:
            return await issue_connect_link(
                session,
                signer,
                settings,
                user_id=args.user,
                tenant_name=args.tenant,
                now=dt.datetime.now(dt.UTC),
                ttl_seconds=args.ttl,
            )

    with failing_as("connect-link"):
        link = asyncio.run(issue())
    if args.json:
        print_json({"url": link.url, "link_id": link.link_id, "expires_at": link.expires_at})
    else:
        print(link.url)
    return 0


def add_to(commands: Commands) -> None:
    """Register ``connect-link``."""
    link = add_command(
        commands,
        "connect-link",
        summary="print a signed, single-use link for a user to connect their record",
        description=(
            "Issue a connect link for one host-application user, as POST /api/v1/connect-links "
            "does. The link starts at SYNCSVC_PUBLIC_URL; opening it shows the provider choice, "
            "and pressing Connect uses it up."
        ),
        examples=("syncsvc connect-link --user USER --tenant clinic",),
    )
    link.add_argument("--user", required=True, help="the host application's user id")
    link.add_argument("--tenant", help="tenant name (default: the patient picks a provider)")
    link.add_argument(
        "--ttl",
        type=int,
        metavar="SECONDS",
        help="how long the link stays valid (default: SYNCSVC_CONNECT_LINK_TTL_SECONDS, a day)",
    )
    link.add_argument("--json", action="store_true", help="print the result as JSON")
    link.set_defaults(handler=_connect_link)
