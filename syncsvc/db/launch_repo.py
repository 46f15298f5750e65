"""Launch attempts and connect links: the rows of a patient's one-time journey to connect.

Each function takes an ``AsyncSession`` and never commits. Both rows are single use: each is
consumed by one guarded UPDATE whose row count says who won, so a replayed callback or a link
opened twice in parallel fails with a LaunchError that says why.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.errors import LaunchError

from .base import rowcount
from .models.connections import ConnectLink, LaunchAttempt

# --- launch attempts -------------------------------------------------------------------------


async def create_launch_attempt(
    session: AsyncSession,
    *,
    attempt_id: str,
    state_hash: str,
    code_verifier_enc: str,
    nonce: str,
    tenant_id: str,
    user_id: str,
    browser_binding_hash: str,
    requested_scopes: Sequence[str],
    now: dt.datetime,
    ttl_seconds: int,
) -> LaunchAttempt:
    """Record an authorize redirect about to be sent (``attempt_id`` from ``new_id()``)."""
    attempt = LaunchAttempt(
        id=attempt_id,
        state_hash=state_hash,
        code_verifier_enc=code_verifier_enc,
        nonce=nonce,
        tenant_id=tenant_id,
        user_id=user_id,
        browser_binding_hash=browser_binding_hash,
        requested_scopes=list(requested_scopes),
        created_at=now,
        expires_at=now + dt.timedelta(seconds=ttl_seconds),
    )
    session.add(attempt)
    await session.flush()
    return attempt


async def consume_launch_attempt(
    session: AsyncSession, *, state_hash: str, browser_binding_hash: str, now: dt.datetime
) -> LaunchAttempt:
    """Mark the attempt with this state used, exactly once, from the browser that started it.

    One guarded UPDATE decides: of two concurrent callbacks with the same state, exactly one
    changes a row. Failures raise LaunchError with reason ``state_unknown``, ``state_replayed``,
    ``state_expired`` or ``state_browser_mismatch``.
    """
    result = await session.execute(
        update(LaunchAttempt)
        .where(
            LaunchAttempt.state_hash == state_hash,
            LaunchAttempt.browser_binding_hash == browser_binding_hash,
            LaunchAttempt.used_at.is_(None),
            LaunchAttempt.expires_at > now,
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    attempt = await session.scalar(
        select(LaunchAttempt)
        .where(LaunchAttempt.state_hash == state_hash)
        .execution_options(populate_existing=True)
    )
    if rowcount(result) == 1 and attempt is not None:
        return attempt
    if attempt is None:
        raise LaunchError(
            "This sign-in was not started here or is no longer known. Please start again.",
            reason="state_unknown",
        )
    if attempt.used_at is not None:
        raise LaunchError(
            "This sign-in has already been completed. Please start again if needed.",
            reason="state_replayed",
        )
    if attempt.expires_at <= now:
        raise LaunchError(
            "This sign-in took too long and expired. Please start again.", reason="state_expired"
        )
    raise LaunchError(
        "This sign-in was started in a different browser. Please start again here.",
        reason="state_browser_mismatch",
    )


async def set_launch_outcome(session: AsyncSession, attempt_id: str, outcome: str) -> None:
    """Record how a consumed launch attempt ended (``connected``, ``ehr_error``, ...)."""
    await session.execute(
        update(LaunchAttempt).where(LaunchAttempt.id == attempt_id).values(outcome=outcome)
    )


async def delete_expired_launch_attempts(session: AsyncSession, *, before: dt.datetime) -> int:
    """Remove attempts that expired before ``before``; returns how many."""
    result = await session.execute(delete(LaunchAttempt).where(LaunchAttempt.expires_at < before))
    return rowcount(result)


# --- connect links ---------------------------------------------------------------------------


async def create_connect_link(
    session: AsyncSession,
    *,
    link_id: str,
    user_id: str,
    tenant_id: str | None,
    now: dt.datetime,
    ttl_seconds: int,
) -> ConnectLink:
    """Record an issued connect link so it can be used once."""
    link = ConnectLink(
        id=link_id,
        user_id=user_id,
        tenant_id=tenant_id,
        created_at=now,
        expires_at=now + dt.timedelta(seconds=ttl_seconds),
    )
    session.add(link)
    await session.flush()
    return link


async def get_connect_link(session: AsyncSession, link_id: str) -> ConnectLink | None:
    """The connect link with this id."""
    return await session.get(ConnectLink, link_id)


async def consume_connect_link(
    session: AsyncSession, link_id: str, *, now: dt.datetime
) -> ConnectLink:
    """Mark a connect link used, exactly once; else LaunchError (unknown, used, expired)."""
    result = await session.execute(
        update(ConnectLink)
        .where(
            ConnectLink.id == link_id,
            ConnectLink.used_at.is_(None),
            ConnectLink.expires_at > now,
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    link = await session.scalar(
        select(ConnectLink)
        .where(ConnectLink.id == link_id)
        .execution_options(populate_existing=True)
    )
    if rowcount(result) == 1 and link is not None:
        return link
    check_connect_link(link, now)
    # Neither unknown nor used, so the guarded UPDATE found it expired.
    raise _link_expired()


def check_connect_link(link: ConnectLink | None, now: dt.datetime) -> None:
    """Raise LaunchError (unknown, used, expired) unless ``link`` can be used at ``now``."""
    if link is None:
        raise LaunchError("This link is not valid.", reason="link_unknown")
    if link.used_at is not None:
        raise LaunchError(
            "This link has already been used. Ask the application that sent it for a new one.",
            reason="link_used",
        )
    if link.expires_at <= now:
        raise _link_expired()


def _link_expired() -> LaunchError:
    return LaunchError(
        "This link has expired. Ask the application that sent it for a new one.",
        reason="link_expired",
    )
