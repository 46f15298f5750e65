"""Queries of disconnecting: erasing a connection's synced data, and the pending revocations.

A disconnect keeps the connection row (status ``revoked``) so the host application can still see
that, and when, it ended. Erasing removes every copy of the patient's record held for it: the
current resources (the shared ones its record references included), their replaced versions,
the record's references, the contents of its documents' attachments, the per-type sync states
and the run history. The
``resource_cursors`` row stays: it holds no patient data, and keeping it means ``seq`` never runs
backwards if the patient reconnects, so a host application's old cursor cannot skip new rows.

Pending revocations are claimed with a lease like connections are (:mod:`syncsvc.db.leases`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import and_, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .base import rowcount
from .leases import claim_rows, lease_free
from .models.activity import PendingRevocation
from .models.attachments import Attachment, AttachmentBlob, AttachmentSource
from .models.records import (
    ReferenceScan,
    Resource,
    ResourceHistory,
    ResourceReference,
    SyncRun,
    SyncState,
)


async def erase_synced_data(session: AsyncSession, connection_id: str) -> int:
    """Delete a connection's resources (the referenced ones too), history, references, sync
    states and runs; returns resources deleted."""
    erased = rowcount(
        await session.execute(delete(Resource).where(Resource.connection_id == connection_id))
    )
    # Attachment rows before the contents they point at (a foreign key).
    for model in (
        ResourceHistory,
        ResourceReference,
        ReferenceScan,
        SyncState,
        SyncRun,
        Attachment,
        AttachmentBlob,
        AttachmentSource,
    ):
        await session.execute(delete(model).where(model.connection_id == connection_id))
    return erased


async def add_pending_revocation(
    session: AsyncSession,
    *,
    revocation_id: str,
    tenant_id: str,
    connection_id: str,
    revocation_endpoint: str,
    token_enc: str,
    token_type_hint: str,
    now: dt.datetime,
    lease_owner: str | None = None,
    lease_until: dt.datetime | None = None,
) -> PendingRevocation:
    """Queue a token for revocation (``token_enc`` bound to ``revocation_id``), due now."""
    row = PendingRevocation(
        id=revocation_id,
        tenant_id=tenant_id,
        connection_id=connection_id,
        revocation_endpoint=revocation_endpoint,
        token_enc=token_enc,
        token_type_hint=token_type_hint,
        attempts=0,
        next_attempt_at=now,
        lease_owner=lease_owner,
        lease_until=lease_until,
        created_at=now,
    )
    session.add(row)
    await session.flush()
    return row


async def pending_revocations_of(
    session: AsyncSession, connection_id: str
) -> list[PendingRevocation]:
    """The revocations still waiting for the EHR's confirmation for one connection."""
    return list(
        await session.scalars(
            select(PendingRevocation)
            .where(PendingRevocation.connection_id == connection_id)
            .order_by(PendingRevocation.created_at, PendingRevocation.id)
        )
    )


def _claimable(now: dt.datetime) -> Any:
    return and_(
        PendingRevocation.next_attempt_at <= now,
        lease_free(PendingRevocation.lease_until, now),
    )


async def claim_pending_revocations(
    session: AsyncSession, owner: str, now: dt.datetime, lease_seconds: int, limit: int
) -> list[PendingRevocation]:
    """Lease up to ``limit`` revocations that are due to ``owner``; commit promptly."""
    return await claim_rows(
        session,
        PendingRevocation,
        PendingRevocation.id,
        claimable=_claimable(now),
        order_by=(PendingRevocation.next_attempt_at, PendingRevocation.id),
        owner=owner,
        now=now,
        lease_seconds=lease_seconds,
        limit=limit,
    )


async def delete_pending_revocation(session: AsyncSession, revocation_id: str, owner: str) -> bool:
    """Remove a revocation (and its token) that ``owner`` still holds; False if it lost it."""
    result = await session.execute(
        delete(PendingRevocation).where(
            PendingRevocation.id == revocation_id, PendingRevocation.lease_owner == owner
        )
    )
    return rowcount(result) == 1


async def reschedule_pending_revocation(
    session: AsyncSession,
    revocation_id: str,
    owner: str,
    *,
    attempts: int,
    next_attempt_at: dt.datetime,
    last_error: str,
) -> bool:
    """Record a failed attempt and give the lease back; False if ``owner`` lost the lease."""
    result = await session.execute(
        update(PendingRevocation)
        .where(PendingRevocation.id == revocation_id, PendingRevocation.lease_owner == owner)
        .values(
            attempts=attempts,
            next_attempt_at=next_attempt_at,
            last_error=last_error,
            lease_owner=None,
            lease_until=None,
        )
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1
