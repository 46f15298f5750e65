"""Run Alembic from inside the service: upgrade, downgrade, and the revision checks for readiness.

Alembic's commands are synchronous and ``env.py`` would otherwise start its own event loop, so each
command runs on an async connection's synchronous facade (``run_sync``) and reaches ``env.py``
through ``config.attributes["connection"]`` (the Alembic cookbook's connection sharing).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from . import models  # noqa: F401  (registers every table on Base.metadata)
from .base import Base
from .engine import create_engine, normalise_url

#: migrations/ sits next to the package in the repository (the project installs editable).
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
FILE_TEMPLATE = "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s"

T = TypeVar("T")


def alembic_config(url: str | None = None) -> Config:
    """Alembic configuration for ``url``; ``alembic.ini`` is not read (nor its logging setup)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("file_template", FILE_TEMPLATE)
    config.set_main_option("path_separator", "os")
    if url is not None:
        # Through attributes, not the ini option: a password with '%' would break interpolation.
        config.attributes["url"] = url
    return config


def database_url_for(config: Config) -> str:
    """The URL ``env.py`` should use: the caller's, else the ini option, else the settings."""
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        from syncsvc.settings import Settings  # noqa: PLC0415 - only when nothing else named one

        url = Settings.from_env().database_url
    return normalise_url(url).render_as_string(hide_password=False)


@asynccontextmanager
async def sqlite_foreign_keys_off(connection: AsyncConnection) -> AsyncIterator[None]:
    """On SQLite, disable foreign keys around a migration.

    Batch mode recreates a table by copying it and dropping the original; with foreign keys on,
    that DROP would fire ``ON DELETE CASCADE`` and silently empty the child tables. The pragma only
    takes effect outside a transaction, hence the commits.
    """
    if connection.dialect.name != "sqlite":
        yield
        return
    await connection.exec_driver_sql("PRAGMA foreign_keys = OFF")
    await connection.commit()
    try:
        yield
    finally:
        await connection.rollback()
        await connection.exec_driver_sql("PRAGMA foreign_keys = ON")
        await connection.commit()


async def _on_connection(url: str, action: Callable[[Connection, Config], T]) -> T:
    config = alembic_config(url)
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            async with sqlite_foreign_keys_off(connection):

                def run(sync_connection: Connection) -> T:
                    config.attributes["connection"] = sync_connection
                    return action(sync_connection, config)

                result = await connection.run_sync(run)
                await connection.commit()
            return result
    finally:
        await engine.dispose()


async def upgrade(url: str, revision: str = "head") -> str | None:
    """Upgrade the database at ``url`` to ``revision``; returns the revision it is now at."""

    def action(connection: Connection, config: Config) -> str | None:
        command.upgrade(config, revision)
        return MigrationContext.configure(connection).get_current_revision()

    return await _on_connection(url, action)


async def upgrade_to_head(url: str) -> str | None:
    """Upgrade the database at ``url`` to the newest revision; returns it."""
    return await upgrade(url, "head")


async def downgrade(url: str, revision: str) -> str | None:
    """Downgrade the database at ``url`` to ``revision`` (``-1``, ``base``, an id)."""

    def action(connection: Connection, config: Config) -> str | None:
        command.downgrade(config, revision)
        return MigrationContext.configure(connection).get_current_revision()

    return await _on_connection(url, action)


async def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at (None if never migrated)."""

    def action(connection: Connection, _config: Config) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    return await _on_connection(url, action)


#: Search index objects made by hand in the migration, one kind per database (see
#: :mod:`syncsvc.db.models.directory`): autogenerate must not offer to drop them.
HAND_MADE = (
    "tenant_search_fts",
    "ix_tenant_search_document_fts",
    "ix_tenant_search_name_prefix",
)


def include_name(name: str | None, type_: str, _parents: Any) -> bool:
    """Alembic's ``include_name`` hook: compare everything but the hand-made search index."""
    return not (type_ in ("table", "index") and name is not None and name.startswith(HAND_MADE))


def head_revision() -> str | None:
    """The newest revision in ``migrations/versions``."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def schema_diff(url: str) -> list[Any]:
    """Differences between the models and the database at ``url`` (empty when in step)."""

    def action(connection: Connection, _config: Config) -> list[Any]:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "include_name": include_name,
                "render_as_batch": connection.dialect.name == "sqlite",
            },
        )
        return list(compare_metadata(context, Base.metadata))

    return await _on_connection(url, action)


async def check(url: str) -> None:
    """``alembic check``: raise AutogenerateDiffsDetected if models and migrations disagree."""

    def action(_connection: Connection, config: Config) -> None:
        command.check(config)

    await _on_connection(url, action)
