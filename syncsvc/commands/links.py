"""``syncsvc connect-link``: a signed, single-use link a patient opens to connect their record."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt

from syncsvc.commands.common import EXIT_USAGE, database, fail, load_settings, print_json


def _connect_link(args: argparse.Namespace) -> int:
    from syncsvc.connect_links import IssuedLink, issue_connect_link
    from syncsvc.errors import SyncsvcError
    from syncsvc.signing import Signer

    settings = load_settings("connect-link")
    if settings is None:
        return EXIT_USAGE
    if settings.link_signing_key is None:
        return fail("connect-link", "set SYNCSVC_LINK_SIGNING_KEY first", EXIT_USAGE)
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

    try:
        link = asyncio.run(issue())
    except SyncsvcError as exc:
        return fail("connect-link", exc.message)
    if args.json:
        print_json({"url": link.url, "link_id": link.link_id, "expires_at": link.expires_at})
    else:
        print(link.url)
    return 0


def add_to(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``connect-link``."""
    link = commands.add_parser(
        "connect-link",
        help="print a signed, single-use link for a user to connect their record",
    )
    link.add_argument("--user", required=True, help="the host application's user id")
    link.add_argument("--tenant", help="tenant name (default: the patient picks a provider)")
    link.add_argument("--ttl", type=int, help="seconds the link stays valid (default: settings)")
    link.add_argument("--json", action="store_true")
    link.set_defaults(handler=_connect_link)
