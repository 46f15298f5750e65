"""``syncsvc migrate``: upgrade the database schema to the newest revision."""

from __future__ import annotations

import argparse
import asyncio
import sys

from syncsvc.commands.common import EXIT_USAGE, load_settings


def _migrate(args: argparse.Namespace) -> int:
    from syncsvc.db.migrate import upgrade_to_head

    settings = load_settings("migrate")
    if settings is None:
        return EXIT_USAGE
    print(f"migrating {settings.database_url_censored}", file=sys.stderr)
    revision = asyncio.run(upgrade_to_head(settings.database_url))
    print(revision or "base")
    return 0


def add_to(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``migrate``."""
    migrate = commands.add_parser("migrate", help="upgrade the database to the newest schema")
    migrate.set_defaults(handler=_migrate)
