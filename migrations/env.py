"""Alembic environment: async engines, plus the cookbook's connection-sharing branch.

``syncsvc migrate`` and the tests hand an open connection in ``config.attributes["connection"]``
(Alembic commands cannot start their own event loop inside a running one); the ``alembic`` command
line has none, so this module opens an async engine for the URL itself.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from syncsvc.db import models  # noqa: F401  (registers every table on Base.metadata)
from syncsvc.db.base import Base
from syncsvc.db.engine import create_engine
from syncsvc.db.migrate import database_url_for, include_name, sqlite_foreign_keys_off

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it (``alembic upgrade --sql``)."""
    context.configure(
        url=database_url_for(config),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        compare_type=True,
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    """Run the migrations on an open synchronous-facade connection."""
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: batch mode recreates the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    """Open an engine for the configured URL and run the migrations on one connection."""
    engine = create_engine(database_url_for(config))
    try:
        async with engine.connect() as connection, sqlite_foreign_keys_off(connection):
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    """Use the connection handed in by the caller, or open one."""
    connection = config.attributes.get("connection")
    if connection is None:
        asyncio.run(run_async_migrations())
    else:
        do_run_migrations(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
