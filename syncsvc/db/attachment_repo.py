"""Queries over the attachments of a connection's documents; each takes a session, none commits.

Every query is scoped to one connection: contents are deduplicated within a connection only, so
one patient's documents can never be read through another connection.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import and_, delete, func, or_, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.vocabulary import ATTACHMENT_ELEMENTS

from .models.attachments import Attachment, AttachmentBlob, AttachmentSource
from .models.records import Resource

#: Keys read per ``IN`` list (bounded statements on both databases).
_SLICE = 500

ResourceKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class SourceRow:
    """A stored document or report whose attachments are to be examined."""

    resource_type: str
    resource_id: str
    version_id: str | None
    last_updated: dt.datetime | None
    content_hash: str
    body: bytes


@dataclass(frozen=True, slots=True)
class NewBlob:
    """A content to store unless the connection has it already."""

    sha256: str
    size: int
    codec: str
    data: bytes


@dataclass
class Examined:
    """What one resource's attachments became: written together in one transaction."""

    resource_type: str
    resource_id: str
    content_hash: str
    #: Every attachment the resource has now (rows to keep or write), by position.
    links: list[Attachment] = field(default_factory=list)
    blobs: list[NewBlob] = field(default_factory=list)
    #: Whether the resource was examined before (its old rows are replaced, not just added).
    seen_before: bool = True


@dataclass(frozen=True, slots=True)
class AttachmentSummary:
    """One connection's attachments in numbers: by state, by reason, and bytes stored."""

    by_status: dict[str, int]
    by_reason: dict[str, dict[str, int]]
    stored_bytes: int
    stored_contents: int

    @property
    def total(self) -> int:
        """Attachments known, whatever became of them."""
        return sum(self.by_status.values())


def _slices(keys: Sequence[ResourceKey]) -> Iterable[Sequence[ResourceKey]]:
    for start in range(0, len(keys), _SLICE):
        yield keys[start : start + _SLICE]


async def keys_to_examine(
    session: AsyncSession, connection_id: str, *, limit: int
) -> list[ResourceKey]:
    """Documents and reports that changed since their attachments were examined, or whose
    attachments failed (or waited for room under the connection's cap) last time."""
    source = AttachmentSource
    changed = await session.execute(
        select(Resource.resource_type, Resource.resource_id)
        .outerjoin(
            source,
            and_(
                source.connection_id == Resource.connection_id,
                source.resource_type == Resource.resource_type,
                source.resource_id == Resource.resource_id,
            ),
        )
        .where(
            Resource.connection_id == connection_id,
            Resource.resource_type.in_(list(ATTACHMENT_ELEMENTS)),
            Resource.deleted_at.is_(None),
            or_(source.resource_hash.is_(None), source.resource_hash != Resource.content_hash),
        )
        .limit(limit)
    )
    keys = dict.fromkeys((str(t), str(i)) for t, i in changed)
    again = await session.execute(
        select(Attachment.resource_type, Attachment.resource_id)
        .where(
            Attachment.connection_id == connection_id,
            or_(Attachment.status == "failed", Attachment.reason == "connection_cap"),
        )
        .distinct()
        .limit(limit)
    )
    keys.update(dict.fromkeys((str(t), str(i)) for t, i in again))
    return list(keys)[:limit]


async def source_rows(
    session: AsyncSession, connection_id: str, keys: Sequence[ResourceKey]
) -> list[SourceRow]:
    """The stored (live) resources of ``keys`` with their bodies."""
    found: list[SourceRow] = []
    for part in _slices(keys):
        rows = await session.execute(
            select(
                Resource.resource_type,
                Resource.resource_id,
                Resource.version_id,
                Resource.last_updated,
                Resource.content_hash,
                Resource.body,
            ).where(
                Resource.connection_id == connection_id,
                tuple_(Resource.resource_type, Resource.resource_id).in_(list(part)),
                Resource.deleted_at.is_(None),
            )
        )
        found += [SourceRow(str(t), str(i), v, lu, str(h), bytes(b)) for t, i, v, lu, h, b in rows]
    return found


async def links_of(
    session: AsyncSession, connection_id: str, keys: Sequence[ResourceKey]
) -> dict[ResourceKey, dict[int, Attachment]]:
    """The attachment rows of ``keys``, by resource and position."""
    found: dict[ResourceKey, dict[int, Attachment]] = {}
    for part in _slices(keys):
        for row in await session.scalars(
            select(Attachment).where(
                Attachment.connection_id == connection_id,
                tuple_(Attachment.resource_type, Attachment.resource_id).in_(list(part)),
            )
        ):
            found.setdefault((row.resource_type, row.resource_id), {})[row.position] = row
    return found


async def examined_before(
    session: AsyncSession, connection_id: str, keys: Sequence[ResourceKey]
) -> set[ResourceKey]:
    """Which of ``keys`` had their attachments examined before."""
    found: set[ResourceKey] = set()
    for part in _slices(keys):
        rows = await session.execute(
            select(AttachmentSource.resource_type, AttachmentSource.resource_id).where(
                AttachmentSource.connection_id == connection_id,
                tuple_(AttachmentSource.resource_type, AttachmentSource.resource_id).in_(
                    list(part)
                ),
            )
        )
        found.update((str(t), str(i)) for t, i in rows)
    return found


async def stored_bytes(session: AsyncSession, connection_id: str) -> int:
    """The size of every content stored for a connection (uncompressed, each once)."""
    total = await session.scalar(
        select(func.coalesce(func.sum(AttachmentBlob.size), 0)).where(
            AttachmentBlob.connection_id == connection_id
        )
    )
    return int(total or 0)


async def all_hashes(session: AsyncSession, connection_id: str) -> set[str]:
    """The SHA-256 of every content a connection has stored."""
    rows = await session.scalars(
        select(AttachmentBlob.sha256).where(AttachmentBlob.connection_id == connection_id)
    )
    return set(rows)


async def stored_hashes(
    session: AsyncSession, connection_id: str, hashes: Collection[str]
) -> set[str]:
    """Which of ``hashes`` the connection has stored already."""
    if not hashes:
        return set()
    rows = await session.scalars(
        select(AttachmentBlob.sha256).where(
            AttachmentBlob.connection_id == connection_id,
            AttachmentBlob.sha256.in_(list(hashes)),
        )
    )
    return set(rows)


async def save_examined(
    session: AsyncSession, connection_id: str, examined: Examined, *, now: dt.datetime
) -> None:
    """Write one resource's attachments: its new contents, its rows, and the version examined.

    A content another document stored first (in this transaction or before) is kept as it is:
    contents are inserted with ``ON CONFLICT DO NOTHING``. Contents the resource no longer uses
    are left for :func:`drop_orphans`.
    """
    key = (examined.resource_type, examined.resource_id)
    if examined.blobs:
        rows = [
            {
                "connection_id": connection_id,
                "sha256": blob.sha256,
                "size": blob.size,
                "codec": blob.codec,
                "data": blob.data,
                "stored_at": now,
            }
            for blob in {b.sha256: b for b in examined.blobs}.values()
        ]
        insert = postgresql.insert if _dialect(session) == "postgresql" else sqlite.insert
        await session.execute(insert(AttachmentBlob).on_conflict_do_nothing(), rows)
    if examined.seen_before:
        await _forget(session, connection_id, [key])
    session.add_all(examined.links)
    source = (
        await session.get(AttachmentSource, (connection_id, *key)) if examined.seen_before else None
    )
    if source is None:
        session.add(
            AttachmentSource(
                connection_id=connection_id,
                resource_type=key[0],
                resource_id=key[1],
                resource_hash=examined.content_hash,
                examined_at=now,
            )
        )
    else:
        source.resource_hash = examined.content_hash
        source.examined_at = now
    await session.flush()


async def drop_orphans(session: AsyncSession, connection_id: str) -> None:
    """Delete the connection's contents no attachment points at any more.

    Run once a sync's attachments are all written, never between them: a document examined
    later in the same sync may point at a content an earlier one stopped using.
    """
    used = select(Attachment.sha256).where(
        Attachment.connection_id == connection_id,
        Attachment.sha256 == AttachmentBlob.sha256,
    )
    await session.execute(
        delete(AttachmentBlob).where(AttachmentBlob.connection_id == connection_id, ~used.exists())
    )


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


async def forget_gone(session: AsyncSession, connection_id: str) -> int:
    """Forget the attachments of documents and reports no longer live; the rows removed."""
    gone = await session.execute(
        select(AttachmentSource.resource_type, AttachmentSource.resource_id)
        .outerjoin(
            Resource,
            and_(
                Resource.connection_id == AttachmentSource.connection_id,
                Resource.resource_type == AttachmentSource.resource_type,
                Resource.resource_id == AttachmentSource.resource_id,
            ),
        )
        .where(
            AttachmentSource.connection_id == connection_id,
            or_(Resource.resource_id.is_(None), Resource.deleted_at.is_not(None)),
        )
    )
    keys = [(str(t), str(i)) for t, i in gone]
    if not keys:
        return 0
    hashes = await _forget(session, connection_id, keys)
    for part in _slices(keys):
        await session.execute(
            delete(AttachmentSource).where(
                AttachmentSource.connection_id == connection_id,
                tuple_(AttachmentSource.resource_type, AttachmentSource.resource_id).in_(
                    list(part)
                ),
            )
        )
    await _drop_unused(session, connection_id, hashes)
    return len(keys)


async def _forget(
    session: AsyncSession, connection_id: str, keys: Sequence[ResourceKey]
) -> set[str]:
    """Delete the attachment rows of ``keys``; the hashes they pointed at."""
    hashes: set[str] = set()
    for part in _slices(keys):
        where = (
            Attachment.connection_id == connection_id,
            tuple_(Attachment.resource_type, Attachment.resource_id).in_(list(part)),
        )
        hashes.update(
            h for h in await session.scalars(select(Attachment.sha256).where(*where)) if h
        )
        await session.execute(delete(Attachment).where(*where))
    return hashes


async def _drop_unused(session: AsyncSession, connection_id: str, hashes: Collection[str]) -> None:
    """Delete the contents among ``hashes`` that no attachment of the connection points at."""
    if not hashes:
        return
    used = set(
        await session.scalars(
            select(Attachment.sha256)
            .where(Attachment.connection_id == connection_id, Attachment.sha256.in_(list(hashes)))
            .distinct()
        )
    )
    unused = [h for h in hashes if h not in used]
    if unused:
        await session.execute(
            delete(AttachmentBlob).where(
                AttachmentBlob.connection_id == connection_id, AttachmentBlob.sha256.in_(unused)
            )
        )


async def summaries(
    session: AsyncSession, connection_ids: Sequence[str]
) -> dict[str, AttachmentSummary]:
    """Each connection's attachments in numbers (connections without any are left out)."""
    if not connection_ids:
        return {}
    ids = list(connection_ids)
    status: dict[str, Counter[str]] = {}
    reasons: dict[str, dict[str, Counter[str]]] = {}
    rows = await session.execute(
        select(Attachment.connection_id, Attachment.status, Attachment.reason, func.count())
        .where(Attachment.connection_id.in_(ids))
        .group_by(Attachment.connection_id, Attachment.status, Attachment.reason)
    )
    for cid, state, reason, count in rows:
        status.setdefault(str(cid), Counter())[str(state)] += int(count)
        if reason is not None:
            by_state = reasons.setdefault(str(cid), {})
            by_state.setdefault(str(state), Counter())[str(reason)] += int(count)
    sizes = {
        str(cid): (int(total or 0), int(count))
        for cid, total, count in await session.execute(
            select(AttachmentBlob.connection_id, func.sum(AttachmentBlob.size), func.count())
            .where(AttachmentBlob.connection_id.in_(ids))
            .group_by(AttachmentBlob.connection_id)
        )
    }
    return {
        cid: AttachmentSummary(
            by_status=dict(status[cid]),
            by_reason={s: dict(c) for s, c in reasons.get(cid, {}).items()},
            stored_bytes=sizes.get(cid, (0, 0))[0],
            stored_contents=sizes.get(cid, (0, 0))[1],
        )
        for cid in ids
        if cid in status
    }


async def attachments_of(session: AsyncSession, connection_id: str) -> list[Attachment]:
    """Every attachment row of a connection, by resource and position."""
    return list(
        await session.scalars(
            select(Attachment)
            .where(Attachment.connection_id == connection_id)
            .order_by(Attachment.resource_type, Attachment.resource_id, Attachment.position)
        )
    )


async def stored_of(
    session: AsyncSession, connection_id: str, keys: Sequence[ResourceKey]
) -> dict[ResourceKey, list[Attachment]]:
    """The attachment rows of ``keys`` (for the resource feed), by resource, in position order."""
    found: dict[ResourceKey, list[Attachment]] = {}
    for part in _slices(keys):
        for row in await session.scalars(
            select(Attachment)
            .where(
                Attachment.connection_id == connection_id,
                tuple_(Attachment.resource_type, Attachment.resource_id).in_(list(part)),
            )
            .order_by(Attachment.position)
        ):
            found.setdefault((row.resource_type, row.resource_id), []).append(row)
    return found


async def content_of(
    session: AsyncSession, connection_id: str, resource_type: str, resource_id: str, position: int
) -> tuple[Attachment, AttachmentBlob] | None:
    """A stored attachment with its content, or None."""
    link = await session.get(Attachment, (connection_id, resource_type, resource_id, position))
    if link is None or link.status != "stored" or link.sha256 is None:
        return None
    blob = await session.get(AttachmentBlob, (connection_id, link.sha256))
    return None if blob is None else (link, blob)
