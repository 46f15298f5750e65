"""``syncsvc migrate``: upgrade the database schema to the newest revision."""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING

from syncsvc.commands.common import EXIT_USAGE, Commands, add_command, load_settings

if TYPE_CHECKING:
    from syncsvc.db.probe import SchemaState


async def _migrate_database(url: str) -> tuple[SchemaState, str | None]:
    """The schema state before, and the revision after, upgrading ``url`` to the newest."""
    from syncsvc.db.engine import create_engine
    from syncsvc.db.migrate import upgrade_to_head
    from syncsvc.db.probe import schema_state

    engine = create_engine(url)
    try:
        # Reachability first, so a wrong port or a missing database is one sentence.
        before = await schema_state(engine, url)
    finally:
        await engine.dispose()
    if before.at_head:
        return before, before.current
    return before, await upgrade_to_head(url)


def _migrate(args: argparse.Namespace) -> int:
    settings = load_settings("migrate")
    if settings is None:
        return EXIT_USAGE
    before, after = asyncio.run(_migrate_database(settings.database_url))
    where = settings.database_url_censored
    if before.current == after:
        print(f"{where}: already at the newest schema ({after}); nothing to do")
    else:
        print(f"{where}: upgraded the schema from {before.current or 'empty'} to {after}")
    return 0


def add_to(commands: Commands) -> None:
    """Register ``migrate``."""
    migrate = add_command(
        commands,
        "migrate",
        summary="create or upgrade the database schema to the newest revision",
        description=(
            "Apply the Alembic migrations the database has not had yet (on an empty database: "
            "all of them) and say what changed. Safe to run again: a database at the newest "
            "schema is left alone. Run it before starting a new version of `serve` or `worker`; "
            "they refuse to start on an older schema."
        ),
        examples=(
            "syncsvc migrate",
            "SYNCSVC_DATABASE_URL=postgresql://syncsvc@db.internal/syncsvc syncsvc migrate",
        ),
    )
    migrate.set_defaults(handler=_migrate)
