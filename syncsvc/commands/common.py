"""What every command shares: help layout, settings loading and a database.

Commands that reach an EHR or run the sync engine open the process's
:class:`~syncsvc.services.Services` instead, and take what they need from it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from syncsvc.settings import Settings

Handler = Callable[[argparse.Namespace], int]

#: Exit codes: 0 done, 1 the work failed, 2 the command was used wrongly or is misconfigured.
EXIT_FAILED = 1
EXIT_USAGE = 2


#: Defaults that say nothing in a help text (flags, "not set").
_SILENT_DEFAULTS = (None, False, True, argparse.SUPPRESS)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Laid-out texts (examples, the top level) keep their line breaks, one-paragraph
    descriptions are wrapped to the terminal, and options show their default."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            not action.option_strings
            or action.default in _SILENT_DEFAULTS
            or "default" in text.lower()
        ):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An argument parser that lays out every command's help the same way."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_command(
    commands: Commands,
    name: str,
    *,
    summary: str,
    description: str,
    examples: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """A sub-command with a one-line summary, a description and examples in its ``--help``."""
    epilog = None
    if examples:
        epilog = "example" + ("s" if len(examples) > 1 else "") + ":\n"
        epilog += "\n".join(f"  {line}" for line in examples)
    return commands.add_parser(name, help=summary, description=description, epilog=epilog)


def fail(command: str, message: str, code: int = EXIT_FAILED) -> int:
    """Tell the operator what went wrong (no traceback) and return the exit code."""
    print(f"syncsvc {command}: {message}", file=sys.stderr)
    return code


def failed(command: str, exc: Exception) -> int:
    """:func:`fail` for a deliberate error: exit 2 for configuration, 1 for everything else."""
    from syncsvc.errors import ConfigError

    code = EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED
    return fail(command, str(exc), code)


class CommandExit(Exception):
    """Ends a command whose failure was already told to the operator; ``code`` is the exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@contextmanager
def failing_as(command: str, *kinds: type[Exception]) -> Iterator[None]:
    """Inside, a deliberate failure ends the command as :func:`failed` tells it.

    ``kinds`` are the failures meant (default: any SyncsvcError, such as an unreachable
    database); one is told in one line and ends the command (exit 2 for configuration, else 1)
    through :class:`CommandExit`, which the CLI turns into the exit code.
    """
    from syncsvc.errors import SyncsvcError

    meant: tuple[type[Exception], ...] = kinds or (SyncsvcError,)
    try:
        yield
    except meant as exc:
        raise CommandExit(failed(command, exc)) from None


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
    """A session factory on the configured database for the duration of one command.

    The database must answer and be at the newest schema, else DatabaseUnavailable says why
    in words (ConfigError for a malformed URL).
    """
    from syncsvc.db.engine import create_engine, create_sessionmaker
    from syncsvc.db.probe import require_newest_schema

    engine = create_engine(settings.database_url)
    try:
        await require_newest_schema(engine, settings.database_url)
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


def print_json(payload: Any) -> None:
    """One JSON document on standard output (datetimes as RFC 3339)."""
    import orjson

    sys.stdout.write(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS).decode() + "\n")
    sys.stdout.flush()
