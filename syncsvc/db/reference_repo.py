"""A connection's references to shared resources: the scan of its record, the references found,
which are due for a read, and how they stand. Every function takes an ``AsyncSession``; none
commits.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .models.records import ReferenceScan, Resource, ResourceReference

#: Keys per ``IN (...)`` list (both databases allow far more bind parameters).
_CHUNK = 1_000


class FoundReference(NamedTuple):
    """A reference found in the record: its key, the type and id it names, and its state."""

    key: str
    resource_type: str | None
    resource_id: str | None
    #: ``pending`` (under the base, to be read) or ``outside_base``.
    state: str
    #: For ``outside_base``: its kind.
    kind: str | None


class Due(NamedTuple):
    """A reference due for a read: its type and id, and the state it had."""

    resource_type: str
    resource_id: str
    state: str


@dataclass
class ReferenceCounts:
    """How a connection's references stand: distinct references per state, and outside kinds."""

    states: dict[str, int] = field(default_factory=dict)
    outside_kinds: dict[str, int] = field(default_factory=dict)
    over_cap: int = 0
    resolved_at: dt.datetime | None = None

    def of(self, state: str) -> int:
        """How many references are in ``state``."""
        return self.states.get(state, 0)


async def scan_position(session: AsyncSession, connection_id: str) -> int:
    """The ``seq`` up to which a connection's resources have been scanned (0: none)."""
    found = await session.scalar(
        select(ReferenceScan.scanned_seq).where(ReferenceScan.connection_id == connection_id)
    )
    return int(found or 0)


async def resources_after(
    session: AsyncSession, connection_id: str, after_seq: int, *, limit: int
) -> list[tuple[int, bytes]]:
    """``(seq, body)`` of a connection's live resources written after ``after_seq``, in order."""
    rows = await session.execute(
        select(Resource.seq, Resource.body)
        .where(
            Resource.connection_id == connection_id,
            Resource.seq > after_seq,
            Resource.deleted_at.is_(None),
        )
        .order_by(Resource.seq)
        .limit(limit)
    )
    return [(int(seq), bytes(body)) for seq, body in rows]


async def last_seq(session: AsyncSession, connection_id: str) -> int:
    """The highest ``seq`` a connection's resources have now (0: none)."""
    found = await session.scalar(
        select(func.max(Resource.seq)).where(Resource.connection_id == connection_id)
    )
    return int(found or 0)


async def record_references(
    session: AsyncSession,
    connection_id: str,
    found: Mapping[str, FoundReference],
    *,
    cap: int,
    now: dt.datetime,
) -> tuple[int, int]:
    """Record the references not recorded yet, up to ``cap`` per connection.

    Returns ``(added, over_cap)``: references recorded now, and new ones left out by the cap.
    A reference already recorded keeps its row (one row per reference per connection).
    """
    keys = sorted(found)
    known: set[str] = set()
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        known.update(
            await session.scalars(
                select(ResourceReference.ref_key).where(
                    ResourceReference.connection_id == connection_id,
                    ResourceReference.ref_key.in_(chunk),
                )
            )
        )
    new = [found[key] for key in keys if key not in known]
    if not new:
        return 0, 0
    recorded = await session.scalar(
        select(func.count())
        .select_from(ResourceReference)
        .where(ResourceReference.connection_id == connection_id)
    )
    room = max(0, cap - int(recorded or 0))
    kept = new[:room]
    session.add_all(
        ResourceReference(
            connection_id=connection_id,
            ref_key=item.key,
            resource_type=item.resource_type,
            resource_id=item.resource_id,
            state=item.state,
            kind=item.kind,
            first_seen_at=now,
            checked_at=None,
        )
        for item in kept
    )
    await session.flush()
    return len(kept), len(new) - len(kept)


async def save_scan(
    session: AsyncSession,
    connection_id: str,
    *,
    scanned_seq: int,
    over_cap: int = 0,
    resolved_at: dt.datetime | None = None,
) -> None:
    """Move a connection's scan position (never backwards) and note a resolution."""
    scan = await session.get(ReferenceScan, connection_id)
    if scan is None:
        scan = ReferenceScan(connection_id=connection_id, scanned_seq=0, over_cap=0)
        session.add(scan)
    scan.scanned_seq = max(scan.scanned_seq or 0, scanned_seq)
    scan.over_cap = (scan.over_cap or 0) + over_cap
    if resolved_at is not None:
        scan.resolved_at = resolved_at
    await session.flush()


async def due_references(
    session: AsyncSession,
    connection_id: str,
    types: Collection[str],
    *,
    stale_before: dt.datetime,
    limit: int,
) -> list[Due]:
    """References of ``types`` due for a read: never read, failed, newly granted, or stale."""
    if not types or limit <= 0:
        return []
    reference = ResourceReference
    rows = await session.execute(
        select(reference.resource_type, reference.resource_id, reference.state)
        .where(
            reference.connection_id == connection_id,
            reference.resource_type.in_(sorted(types)),
            reference.state != "outside_base",
            or_(
                reference.state.in_(("pending", "failed", "not_granted")),
                reference.checked_at.is_(None),
                reference.checked_at < stale_before,
            ),
        )
        # Never read first, then the longest unread: a capped run leaves the freshest.
        .order_by(reference.checked_at.is_not(None), reference.checked_at, reference.ref_key)
        .limit(limit)
    )
    return [Due(str(t), str(i), str(s)) for t, i, s in rows]


async def mark_references(
    session: AsyncSession,
    connection_id: str,
    resource_type: str,
    resource_ids: Sequence[str],
    *,
    state: str,
    now: dt.datetime,
) -> None:
    """Set the state of some references of one type, read (or tried) at ``now``."""
    ids = sorted(set(resource_ids))
    for start in range(0, len(ids), _CHUNK):
        await session.execute(
            update(ResourceReference)
            .where(
                ResourceReference.connection_id == connection_id,
                ResourceReference.resource_type == resource_type,
                ResourceReference.state != "outside_base",
                ResourceReference.resource_id.in_(ids[start : start + _CHUNK]),
            )
            .values(state=state, checked_at=now)
        )


async def mark_not_granted(
    session: AsyncSession, connection_id: str, granted: Collection[str]
) -> None:
    """References of types the grant does not cover that wait for a read: ``not_granted``."""
    await session.execute(
        update(ResourceReference)
        .where(
            ResourceReference.connection_id == connection_id,
            ResourceReference.state.in_(("pending", "failed")),
            ResourceReference.resource_type.not_in(sorted(granted)),
        )
        .values(state="not_granted")
    )


async def reference_counts(session: AsyncSession, connection_id: str) -> ReferenceCounts:
    """How a connection's references stand (one read for every surface that reports them)."""
    counts = ReferenceCounts()
    rows = await session.execute(
        select(ResourceReference.state, ResourceReference.kind, func.count())
        .where(ResourceReference.connection_id == connection_id)
        .group_by(ResourceReference.state, ResourceReference.kind)
    )
    for state, kind, count in rows:
        counts.states[state] = counts.states.get(state, 0) + int(count)
        if state == "outside_base" and kind is not None:
            counts.outside_kinds[kind] = counts.outside_kinds.get(kind, 0) + int(count)
    scan = await session.get(ReferenceScan, connection_id)
    if scan is not None:
        counts.over_cap = scan.over_cap or 0
        counts.resolved_at = scan.resolved_at
    return counts
