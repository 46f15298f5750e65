"""Storing one page of pulled resources: compare with what is stored, then write.

Work is split so the transaction stays short: :func:`syncsvc.sync.pipeline.prepare.prepare_page`
does the CPU part outside any transaction (compartment guard, canonical bytes and their hash,
computed once per resource), and :func:`store_page` runs inside the caller's transaction with a
fixed number of statements per page (the group writer, :mod:`syncsvc.sync.pipeline.writer`, runs
it with the group's :class:`~syncsvc.sync.pipeline.batch.PageBatch`).
An unchanged resource (same hash) is not rewritten and keeps its ``seq``; a changed one has its
previous version copied to history first.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import resource_repo, resource_writes
from syncsvc.sync.pipeline.batch import PageBatch, PendingRow
from syncsvc.sync.pipeline.prepare import ENTERED_IN_ERROR, Prepared, PreparedPage

VANISHED = "vanished"
#: Rejected resources named in a run's report at most (the count is always complete).
REJECTED_SHOWN = 20


@dataclass
class Counts:
    """What happened to the resources of a page, a type or a run."""

    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    rejected: int = 0

    def add(self, other: Counts) -> None:
        """Add ``other`` into this."""
        self.new += other.new
        self.changed += other.changed
        self.unchanged += other.unchanged
        self.deleted += other.deleted
        self.rejected += other.rejected

    def as_dict(self) -> dict[str, int]:
        """The counts by name."""
        return {
            "new": self.new,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "deleted": self.deleted,
            "rejected": self.rejected,
        }

    def columns(self) -> dict[str, int]:
        """The counts as the ``*_count`` columns of ``sync_states`` and ``sync_runs``."""
        return {f"{name}_count": value for name, value in self.as_dict().items()}


async def store_page(
    session: AsyncSession,
    connection_id: str,
    page: PreparedPage,
    *,
    now: dt.datetime,
    stored_ids: set[str] | None = None,
    batch: PageBatch | None = None,
) -> Counts:
    """Write a prepared page in the caller's transaction; returns what happened to each resource.

    With ``batch`` the page's rows join the batch (written when it is flushed, in the same
    transaction); without, they are written now.

    ``stored_ids``, when given, is every id of this type the connection has stored: the type
    had nothing before this run and these are the ids this run stored so far (this adds the
    page's). Ids outside it need no lookup, which spares a first sync a query per page (and
    PostgreSQL a scan: before a fresh table has statistics its planner filters a connection's
    whole type for an id list). Pages are written in order, so the set is exact for each; a
    rolled-back write leaves ids in it that were not stored, which costs a lookup, never a miss.
    """
    counts = Counts(rejected=len(page.rejected))
    if not page.items:
        return counts
    resource_type = page.resource_type
    ids = [item.resource_id for item in page.items]
    if stored_ids is not None:
        ids = [rid for rid in ids if rid in stored_ids]
        stored_ids.update(item.resource_id for item in page.items)
    stored = (
        await resource_writes.stored_versions(session, connection_id, resource_type, ids)
        if ids
        else {}
    )
    if batch is not None and ids:
        stored = batch.overlay(connection_id, resource_type, ids, stored)
    writes: list[Prepared] = []
    replaced: list[str] = []
    for item in page.items:
        old = stored.get(item.resource_id)
        if old is None:
            writes.append(item)
            if item.entered_in_error:
                counts.deleted += 1
            else:
                counts.new += 1
            continue
        same = old.content_hash == item.content_hash
        if same and old.deleted_reason != VANISHED:
            counts.unchanged += 1
            continue
        # Changed, or back after having vanished: a new seq either way.
        writes.append(item)
        if not same:
            replaced.append(item.resource_id)
        if item.entered_in_error and old.deleted_reason != ENTERED_IN_ERROR:
            counts.deleted += 1
        else:
            counts.changed += 1
    if not writes:
        return counts
    if replaced:
        if batch is not None and batch.holds_any(connection_id, resource_type, replaced):
            # History gets the version being replaced; it must be in the table to be copied.
            await batch.flush(session)
        await resource_writes.copy_to_history(
            session, connection_id, resource_type, replaced, now=now
        )
    own = PageBatch() if batch is None else batch
    for item in writes:
        deleted = item.entered_in_error
        own.add(
            connection_id,
            resource_type,
            item.resource_id,
            PendingRow(
                item.version_id,
                item.last_updated,
                item.body,
                item.content_hash,
                now,
                now if deleted else None,
                ENTERED_IN_ERROR if deleted else None,
                # Neither the table nor the batch had it: inserted, not upserted.
                item.resource_id not in stored,
            ),
        )
    if batch is None:
        await own.flush(session)
    return counts


async def flag_vanished(
    session: AsyncSession,
    connection_id: str,
    resource_type: str,
    seen: set[str],
    *,
    now: dt.datetime,
    within: Callable[[bytes], bool] | None = None,
    live: set[str] | None = None,
) -> int:
    """After a complete full pull: flag stored resources the EHR no longer returned.

    ``within`` (a pull of some parts of the type only) says which stored bodies the pull's
    searches could have found; the others are not the pull's to judge and stay. ``live``: the
    ids of the type's stored live resources, if the caller read them (in this transaction).
    """
    if live is None:
        live = await resource_repo.live_resource_ids(session, connection_id, resource_type)
    gone = sorted(live - seen)
    if within is not None and gone:
        bodies = await resource_repo.live_bodies(session, connection_id, resource_type, gone)
        gone = [rid for rid in gone if rid in bodies and within(bodies[rid])]
    return await resource_writes.flag_deleted(
        session, connection_id, resource_type, gone, reason=VANISHED, now=now
    )
