"""Queries of failed launches: recording one, and the counts health, checks and metrics read.

Nothing here commits. Counting happens per tenant and reason in the database; the windows (last
hour, last day) are the caller's ``since``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .models.connections import LaunchAttempt, LaunchFailure

#: ``launch_failures.ehr_description`` is for people and may quote anything: keep it short.
DESCRIPTION_LENGTH = 500
#: ``String(100)`` columns of the EHR's error and code.
CODE_LENGTH = 100
REASON_LENGTH = 64


@dataclass(frozen=True, slots=True)
class FailureCount:
    """How many launches of one tenant failed for one reason."""

    tenant_id: str
    reason: str
    count: int


async def add_launch_failure(
    session: AsyncSession,
    *,
    tenant_id: str,
    at: dt.datetime,
    reason: str,
    syncsvc_reason: str,
    attempt_id: str | None = None,
    ehr_error: str | None = None,
    ehr_code: str | None = None,
    ehr_description: str | None = None,
) -> None:
    """Record one failed launch; ``ehr_description`` must already be redacted."""
    session.add(
        LaunchFailure(
            tenant_id=tenant_id,
            at=at,
            attempt_id=attempt_id,
            reason=reason[:REASON_LENGTH],
            syncsvc_reason=syncsvc_reason[:REASON_LENGTH],
            ehr_error=ehr_error[:CODE_LENGTH] if ehr_error else None,
            ehr_code=ehr_code[:CODE_LENGTH] if ehr_code else None,
            ehr_description=ehr_description[:DESCRIPTION_LENGTH] if ehr_description else None,
        )
    )
    await session.flush()


async def failure_counts(
    session: AsyncSession, since: dt.datetime | None, tenant_ids: Sequence[str] | None = None
) -> list[FailureCount]:
    """Failed launches at or after ``since`` (every one kept when None), per tenant and reason."""
    query = select(LaunchFailure.tenant_id, LaunchFailure.reason, func.count()).group_by(
        LaunchFailure.tenant_id, LaunchFailure.reason
    )
    if since is not None:
        query = query.where(LaunchFailure.at >= since)
    if tenant_ids is not None:
        query = query.where(LaunchFailure.tenant_id.in_(tenant_ids))
    rows = await session.execute(query)
    return [FailureCount(tenant_id, reason, int(n)) for tenant_id, reason, n in rows]


async def successful_launches(
    session: AsyncSession, since: dt.datetime, tenant_ids: Sequence[str] | None = None
) -> dict[str, int]:
    """Launches that ended in an active connection at or after ``since``, per tenant."""
    query = (
        select(LaunchAttempt.tenant_id, func.count())
        .where(LaunchAttempt.outcome == "active", LaunchAttempt.used_at >= since)
        .group_by(LaunchAttempt.tenant_id)
    )
    if tenant_ids is not None:
        query = query.where(LaunchAttempt.tenant_id.in_(tenant_ids))
    return {tenant_id: int(n) for tenant_id, n in await session.execute(query)}


async def recent_failures(
    session: AsyncSession, tenant_id: str, since: dt.datetime, limit: int = 20
) -> list[LaunchFailure]:
    """The tenant's newest failed launches at or after ``since``."""
    return list(
        await session.scalars(
            select(LaunchFailure)
            .where(LaunchFailure.tenant_id == tenant_id, LaunchFailure.at >= since)
            .order_by(LaunchFailure.at.desc(), LaunchFailure.id.desc())
            .limit(limit)
        )
    )


async def attempt_tenant_id(session: AsyncSession, state_hash: str) -> str | None:
    """The tenant of the launch attempt with this state hash, if one is known."""
    return await session.scalar(
        select(LaunchAttempt.tenant_id).where(LaunchAttempt.state_hash == state_hash)
    )
