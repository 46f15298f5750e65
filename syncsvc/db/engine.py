"""Async engines and session factories for SQLite (aiosqlite) and PostgreSQL (asyncpg).

URLs are accepted in their everyday spelling (``postgresql://``, ``sqlite:///``) and rewritten to
the async drivers. SQLite connections get WAL (readers do not block the writer), enforced foreign
keys (SQLite ignores them by default) and a busy timeout (a second writer waits, not fails).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from syncsvc.db.sqlite_driver import one_trip_dbapi
from syncsvc.errors import ConfigError

SQLITE_BUSY_TIMEOUT_MS = 10_000
#: Connections a sized pool opens beyond its size for a burst, closed again when returned.
POOL_OVERFLOW = 8
_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}


def normalise_url(url: str | URL) -> URL:
    """``url`` with its driver set to asyncpg or aiosqlite; ConfigError for anything else."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError, ValueError or TypeError
        # The value itself is never repeated: it may hold a password.
        raise ConfigError(
            "SYNCSVC_DATABASE_URL is not a valid database URL "
            "(expected postgresql://USER@HOST/NAME or sqlite:///PATH)"
        ) from exc
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise ConfigError(
            f"SYNCSVC_DATABASE_URL: scheme {parsed.drivername!r} is not supported "
            "(use postgresql:// or sqlite:///)"
        )
    return parsed.set(drivername=driver)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        # Safe with WAL: a power loss may drop the last commits, never corrupt the file.
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


#: The SQLite database holds encrypted tokens and patient records: only its owner reads it.
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600


def private_sqlite_file(path: Path) -> None:
    """Create ``path``'s directory (0700) and the empty database file (0600) if missing.

    SQLite would create the file under the process umask (commonly 0644, readable by every
    local user); its -wal and -shm files copy the database file's mode. A file that exists
    with wider permissions is narrowed, as is a directory syncsvc created itself.
    """
    directory = path.parent
    if not directory.exists():
        directory.mkdir(parents=True, mode=DIRECTORY_MODE)
        directory.chmod(DIRECTORY_MODE)  # mkdir's mode is filtered by the umask
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if file.exists() and file.stat().st_mode & 0o077:
                file.chmod(FILE_MODE)
        except PermissionError:
            # Another user's file: theirs to fix; SQLite will say if it cannot be opened.
            continue


def create_engine(
    url: str | URL, *, echo: bool = False, pool_size: int | None = None
) -> AsyncEngine:
    """An async engine for ``url``, creating a SQLite file's directory if needed.

    ``pool_size``: connections the pool keeps (the ``db_pool_size`` setting; opened as they are
    first needed), with :data:`POOL_OVERFLOW` more for a burst; unset, SQLAlchemy's 5 and 10,
    which suit a command's few statements, not a process working hundreds of connections.
    """
    parsed = normalise_url(url)
    kwargs: dict[str, Any] = {"echo": echo}
    if pool_size is not None:
        kwargs["pool_size"] = pool_size
        kwargs["max_overflow"] = POOL_OVERFLOW
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:":
            raise ConfigError(
                "SYNCSVC_DATABASE_URL: an in-memory SQLite database is not supported; name a file"
            )
        try:
            private_sqlite_file(Path(database))
        except OSError as exc:
            raise ConfigError(
                f"SYNCSVC_DATABASE_URL: cannot create the SQLite database {database}: "
                f"{(exc.strerror or 'failed').lower()}"
            ) from exc
        # No rollback when a connection goes back to the pool: every session and connection
        # ends its own transaction before it lets the connection go, and on aiosqlite that
        # redundant rollback was one more trip to the connection's thread per transaction.
        kwargs["pool_reset_on_return"] = None
        # The same driver, one trip to its thread per statement (see sqlite_driver).
        kwargs["module"] = one_trip_dbapi()
    else:
        # A connection broken by a database restart is replaced, not handed to a request.
        kwargs["pool_pre_ping"] = True
    # Bound parameters hold patient ids, resource bodies and ciphertexts: never in error text,
    # which reaches the logs with any unexpected database exception.
    kwargs["hide_parameters"] = True
    engine = create_async_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """The session factory: use ``async with sessionmaker.begin() as session`` per unit of work."""
    return async_sessionmaker(engine, expire_on_commit=False)
