"""The resource rows of one group transaction's pages, written together.

A group transaction of the writer (:class:`syncsvc.sync.pipeline.writer.GroupWriter`) takes the
pages of several pulls. Written page by page, each costs a seq reservation and an upsert, and each
statement waits its turn on the event loop while pulls parse their next pages; the writer then
spends most of its time waiting. Gathered here instead, a group's pages cost one seq reservation
for all their connections and one write of their rows (on PostgreSQL a ``COPY`` of resources new
to the table and an upsert of the others).

Rows are kept in the order they were added, and a later row for the same resource replaces an
earlier one (and takes its place at the end), so seqs follow the order of writing exactly as if
each page had been written on its own. Readers of the same transaction must not miss rows
waiting here: :meth:`PageBatch.overlay` answers for them, and the writer flushes the batch
before any other kind of work.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import NamedTuple

from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import resource_writes
from syncsvc.db.resource_writes import ResourceRow, StoredVersion

Key = tuple[str, str, str]


class PendingRow(NamedTuple):
    """A row waiting for its seq."""

    version_id: str | None
    last_updated: dt.datetime | None
    body: bytes
    content_hash: str
    stored_at: dt.datetime
    deleted_at: dt.datetime | None
    deleted_reason: str | None
    #: The table held no row of this resource when the row was made (nor did the batch), so it
    #: is inserted rather than upserted. False is always safe.
    absent: bool = False


#: Bodies one write statement carries at most: PostgreSQL takes no value over 1 GB (an upsert's
#: bodies travel as one value), and a bound keeps a statement's memory small.
STATEMENT_BYTES = 32 * 1024 * 1024


class PageBatch:
    """Rows of one transaction's pages, keyed by (connection, type, id), in writing order."""

    def __init__(self, *, statement_bytes: int = STATEMENT_BYTES) -> None:
        self._rows: dict[Key, PendingRow] = {}
        self._statement_bytes = statement_bytes

    def __len__(self) -> int:
        return len(self._rows)

    def add(
        self, connection_id: str, resource_type: str, resource_id: str, row: PendingRow
    ) -> None:
        """Queue ``row``; it replaces a waiting row of the same resource and goes last."""
        key = (connection_id, resource_type, resource_id)
        self._rows.pop(key, None)
        self._rows[key] = row

    def holds_any(self, connection_id: str, resource_type: str, ids: list[str]) -> bool:
        """Whether a row of any of ``ids`` is waiting."""
        rows = self._rows
        return bool(rows) and any((connection_id, resource_type, rid) in rows for rid in ids)

    def overlay(
        self,
        connection_id: str,
        resource_type: str,
        ids: list[str],
        stored: dict[str, StoredVersion],
    ) -> dict[str, StoredVersion]:
        """``stored`` (read from the database) with the waiting rows of ``ids`` over it."""
        rows = self._rows
        if not rows:
            return stored
        for rid in ids:
            row = rows.get((connection_id, resource_type, rid))
            if row is not None:
                stored[rid] = StoredVersion(row.content_hash, row.deleted_reason)
        return stored

    async def flush(self, session: AsyncSession) -> None:
        """Write every waiting row in ``session``'s transaction, seqs in writing order."""
        if not self._rows:
            return
        # One reservation for every connection in the batch: the cursor rows stay locked until
        # the transaction ends, so each connection's seqs become visible in order.
        counts = Counter(connection_id for connection_id, _, _ in self._rows)
        next_seq = await resource_writes.reserve_seqs_many(session, counts)
        absent: list[ResourceRow] = []
        present: list[ResourceRow] = []
        size = 0
        for (connection_id, resource_type, resource_id), pending in self._rows.items():
            seq = next_seq[connection_id]
            next_seq[connection_id] = seq + 1
            row = ResourceRow(
                connection_id,
                resource_type,
                resource_id,
                pending.version_id,
                pending.last_updated,
                pending.body,
                pending.content_hash,
                seq,
                pending.stored_at,
                pending.deleted_at,
                pending.deleted_reason,
            )
            (absent if pending.absent else present).append(row)
            size += len(pending.body)
            if size >= self._statement_bytes:
                await resource_writes.write_rows(session, absent, present)
                absent, present, size = [], [], 0
        await resource_writes.write_rows(session, absent, present)
        self._rows.clear()
