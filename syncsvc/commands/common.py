"""What every command shares: settings loading, a database and a sync context, JSON output."""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiohttp
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from syncsvc.settings import Settings
    from syncsvc.sync.context import SyncContext
    from syncsvc.sync.page_decode import PageDecoder

Handler = Callable[[argparse.Namespace], int]

#: Exit codes: 0 done, 1 the work failed, 2 the command was used wrongly or is misconfigured.
EXIT_FAILED = 1
EXIT_USAGE = 2


def fail(command: str, message: str, code: int = EXIT_FAILED) -> int:
    """Tell the operator what went wrong (no traceback) and return the exit code."""
    print(f"syncsvc {command}: {message}", file=sys.stderr)
    return code


def load_settings(command: str, *, configure_logs: bool = False) -> Settings | None:
    """The process settings, or None after telling the operator what is wrong.

    With ``configure_logs``, logging is also set up as the settings say.
    """
    from syncsvc.errors import ConfigError
    from syncsvc.settings import Settings

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        fail(command, exc.message, EXIT_USAGE)
        return None
    if configure_logs:
        from syncsvc.logging import configure_logging

        configure_logging(log_format=settings.log_format, log_level=settings.log_level)
    return settings


@asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A session factory on the configured database for the duration of one command."""
    from syncsvc.db.engine import create_engine, create_sessionmaker

    engine = create_engine(settings.database_url)
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


def sync_context(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    http: aiohttp.ClientSession,
    decoder: PageDecoder | None = None,
) -> SyncContext:
    """The sync engine's context on this command's database and HTTP client.

    Pages are decoded in place unless ``decoder`` (a started one) is given. Raises ConfigError
    when no vault key is configured.
    """
    from syncsvc.sync.context import SyncContext
    from syncsvc.sync.page_decode import PageDecoder
    from syncsvc.vault import Vault

    return SyncContext(
        settings=settings,
        sessionmaker=sessionmaker,
        vault=Vault.from_settings(settings),
        http=http,
        decoder=decoder or PageDecoder(),
    )


def print_json(payload: Any) -> None:
    """One JSON document on standard output (datetimes as RFC 3339)."""
    import orjson

    sys.stdout.write(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS).decode() + "\n")
    sys.stdout.flush()
