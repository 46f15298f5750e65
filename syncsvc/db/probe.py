"""Is the configured database there, and at the newest schema? Answers in words for operators.

Commands, ``serve`` and ``worker`` ask before they start work, so a wrong port, a missing database
or a forgotten ``syncsvc migrate`` is one plain sentence instead of a driver's traceback (or, for
``serve``, a traceback every tick). :func:`explain_database_error` also turns a database failure
met later into the same words. Nothing here shows a password: URLs are censored, and driver
messages (``database "x" does not exist``) never carry one.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from syncsvc.errors import DatabaseUnavailable
from syncsvc.settings import censor_dsn

from .engine import create_engine
from .migrate import alembic_config, head_revision

#: asyncpg waits 60 seconds for a silent server by default; an operator should not.
CONNECT_TIMEOUT_SECONDS = 10.0
SETTING = "SYNCSVC_DATABASE_URL"


@dataclass(frozen=True)
class SchemaState:
    """The revision the database is at and the newest one this code knows."""

    current: str | None
    head: str | None

    @property
    def at_head(self) -> bool:
        """Whether the schema is the newest one."""
        return self.current == self.head


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes, outermost first (bounded: chains can loop)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        if isinstance(current, sa_exc.DBAPIError) and isinstance(current.orig, BaseException):
            current = current.orig
        else:
            current = current.__cause__ or current.__context__
    return seen


def _where(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"the SQLite file {parsed.database}"
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}"


def explain_database_error(exc: BaseException, url: str) -> str | None:
    """What a database failure means, in words; None when ``exc`` is not one."""
    chain = _chain(exc)
    names = {type(item).__name__ for item in chain}
    texts = " ".join(str(item) for item in chain)
    where = _where(url)
    if "InvalidCatalogNameError" in names:
        name = make_url(url).database
        return f'database "{name}" does not exist on {where} (create it, then `syncsvc migrate`)'
    if names & {"InvalidPasswordError", "InvalidAuthorizationSpecificationError"}:
        problem = next(str(i) for i in chain if type(i).__name__.startswith("Invalid"))
        return f"{where} refused the login: {problem}"
    if "UndefinedTableError" in names or "no such table" in texts:
        return "the database has no syncsvc schema (or an old one): run `syncsvc migrate`"
    for item in chain:
        if isinstance(item, socket.gaierror):
            return f"could not resolve {make_url(url).host}"
        if isinstance(item, ConnectionRefusedError):
            return f"connection refused by {where}"
        if isinstance(item, TimeoutError):
            return f"no answer from {where} within {CONNECT_TIMEOUT_SECONDS:.0f} seconds"
        if isinstance(item, sqlite3.OperationalError) and "unable to open" in str(item):
            return f"cannot open {where}"
        if isinstance(item, OSError) and item.strerror:
            return f"cannot reach {where}: {item.strerror.lower()}"
    if any(isinstance(item, sa_exc.DBAPIError | sqlite3.Error) for item in chain) or any(
        name.startswith("Postgres") or name.endswith("asyncpg.Error") for name in names
    ):
        return f"the database at {where} failed: {type(chain[-1]).__name__}"
    return None


def unavailable(exc: BaseException, url: str) -> DatabaseUnavailable | None:
    """A :class:`DatabaseUnavailable` naming the setting for a database failure, else None."""
    words = explain_database_error(exc, url)
    if words is None:
        return None
    return DatabaseUnavailable(f"cannot use the database {censor_dsn(url)} ({SETTING}): {words}")


def _known(revision: str) -> bool:
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:
        return False


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def schema_state(engine: AsyncEngine, url: str) -> SchemaState:
    """Connect and read the schema revision; DatabaseUnavailable (in words) when that fails."""
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS), engine.connect() as connection:
            current = await connection.run_sync(_current)
    except Exception as exc:
        problem = unavailable(exc, url)
        if problem is None:
            raise
        raise problem from exc
    return SchemaState(current=current, head=head_revision())


def schema_problem(state: SchemaState, url: str) -> str | None:
    """Why the schema is not usable by this code, or None when it is at the newest revision."""
    if state.at_head:
        return None
    shown = f"{censor_dsn(url)} ({SETTING})"
    if state.current is None:
        return f"the database {shown} has no syncsvc schema yet: run `syncsvc migrate`"
    if not _known(state.current):
        return (
            f"the database {shown} is at revision {state.current}, which this syncsvc does not "
            "know (was it migrated by a newer version?)"
        )
    return (
        f"the database {shown} is at revision {state.current}, not the newest ({state.head}): "
        "run `syncsvc migrate`"
    )


async def require_newest_schema(engine: AsyncEngine, url: str) -> None:
    """Raise DatabaseUnavailable unless the database answers and is at the newest revision."""
    problem = schema_problem(await schema_state(engine, url), url)
    if problem is not None:
        raise DatabaseUnavailable(problem, reason="schema_outdated")


async def wait_for_database(
    url: str,
    *,
    wait_seconds: float,
    on_change: Callable[[str | None], None],
    retry_seconds: float = 2.0,
) -> None:
    """Return once the database answers at the newest schema, trying for up to ``wait_seconds``.

    ``on_change`` hears each new problem once (its message) and the recovery once (None), so a
    wait of minutes logs a few lines, not one per attempt. DatabaseUnavailable when time is up.
    """
    engine = create_engine(url)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(wait_seconds, 0.0)
    last: str | None = None
    try:
        while True:
            try:
                await require_newest_schema(engine, url)
            except DatabaseUnavailable as exc:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise
                # A migration in progress moves the schema one revision at a time: that is one
                # wait for the newest schema, not a new problem at every revision it passes.
                problem = exc.reason if exc.reason == "schema_outdated" else exc.message
                if problem != last:
                    last = problem
                    on_change(exc.message)
                await asyncio.sleep(min(retry_seconds, remaining))
                continue
            if last is not None:
                on_change(None)
            return
    finally:
        await engine.dispose()
