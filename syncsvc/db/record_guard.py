"""The check every write of a connection's record makes before it commits: not disconnected.

A disconnect that erases the record deletes it in one transaction, while a pull of the same
connection, in this process or another, may still be fetching pages. Its later writes must not
store the record again. So a transaction that wrote a record reads, last, whether the connection
is still open, and is rolled back if it is not; by then its writes hold locks that make a
concurrent disconnect wait for it:

- PostgreSQL: the read locks the connection rows ``FOR SHARE`` (a row the transaction inserted
  resources for is already locked ``FOR KEY SHARE`` by the foreign key). A disconnect locks the
  row for its update (:func:`syncsvc.db.repo.get_connection` with ``lock``), so it either
  committed before the read, which then sees it, or waits for the commit and erases what the
  transaction wrote as well.
- SQLite: a transaction that wrote holds the database's write lock, so no disconnect commits
  between its writes, the read and its commit.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from .models.connections import Connection

#: The status of a disconnected connection (``syncsvc.vocabulary.ConnectionStatus``).
DISCONNECTED = "revoked"

_OPEN = select(Connection.id).where(
    Connection.id.in_(bindparam("ids", expanding=True)), Connection.status != DISCONNECTED
)
_OPEN_LOCKED = _OPEN.with_for_update(read=True)


async def lock_open_records(session: AsyncSession, connection_ids: Collection[str]) -> set[str]:
    """Which of ``connection_ids`` are not disconnected, with a disconnect of them held off
    until this transaction ends (call it after the transaction's writes)."""
    params = {"ids": list(connection_ids)}
    sqlite = session.get_bind().dialect.name == "sqlite"
    rows = await session.execute(_OPEN if sqlite else _OPEN_LOCKED, params)
    return {str(row[0]) for row in rows}
