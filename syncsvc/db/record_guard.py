"""The check every write of a connection's record makes first: it is not disconnected.

A disconnect that erases the record deletes it in one transaction, while a pull of the same
connection, in this process or another, may still be fetching pages. Its later writes must not
store the record again. So a transaction that writes a record first reads, and locks against a
concurrent disconnect, which of its connections are still open:

- PostgreSQL reads the connection rows ``FOR SHARE``. A disconnect locks the row for its update
  (:func:`syncsvc.db.repo.get_connection` with ``lock``) and so waits until the writing
  transaction has committed, then erases what it wrote too; a write that comes after the
  disconnect reads the new status.
- SQLite begins the transaction ``IMMEDIATE``, taking the database's write lock before the read,
  so no disconnect commits between the read and the writes.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import bindparam, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from .models.connections import Connection

#: The status of a disconnected connection (``syncsvc.vocabulary.ConnectionStatus``).
DISCONNECTED = "revoked"

_OPEN = select(Connection.id).where(
    Connection.id.in_(bindparam("ids", expanding=True)), Connection.status != DISCONNECTED
)
_OPEN_LOCKED = _OPEN.with_for_update(read=True)
_BEGIN_WRITING = text("BEGIN IMMEDIATE")


async def lock_open_records(session: AsyncSession, connection_ids: Collection[str]) -> set[str]:
    """Which of ``connection_ids`` are not disconnected, with a disconnect of them held off
    until this transaction ends. Must be the transaction's first statement."""
    params = {"ids": list(connection_ids)}
    if session.get_bind().dialect.name == "sqlite":
        await session.execute(_BEGIN_WRITING)
        rows = await session.execute(_OPEN, params)
    else:
        rows = await session.execute(_OPEN_LOCKED, params)
    return {str(row[0]) for row in rows}
