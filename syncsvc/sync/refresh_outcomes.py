"""What a refresh attempt ends in: its result, and the bookkeeping of a failed one.

A failure is sorted on the two axes of :mod:`syncsvc.errors`.
:class:`~syncsvc.errors.ReauthRequired` (``invalid_grant``, a withdrawn registration, no tokens,
no offline access) marks the connection ``needs_reauth`` with a message a patient or operator
can act on and stops its refreshes; :class:`~syncsvc.errors.Transient` backs off (honouring
``Retry-After``) and keeps every stored token. Before either, a refresh token refused because
another writer rotated it away is told apart from the grant failing: the other writer's tokens
are used instead.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import repo
from syncsvc.db.models.connections import Connection
from syncsvc.errors import Conflict, ReauthRequired, Transient
from syncsvc.vocabulary import (
    OFFLINE_ACCESS_EXPIRED_MESSAGE,
    OFFLINE_ACCESS_NOT_GRANTED,
    RefreshOutcome,
)

from .backoff import Backoff
from .connection_read import ConnectionRead
from .context import SyncContext
from .credentials import StoredTokens, load_tokens
from .grant_states import GrantChange

#: Retry policy for failed refreshes: a first retry within 15 s, at most an hour apart.
REFRESH_BACKOFF = Backoff(base_seconds=15.0, cap_seconds=3600.0)
#: ``Connection.status_reason`` is a String(64).
REASON_LENGTH = 64

#: What each reauth reason means, in words a patient or operator can act on.
_REAUTH_MESSAGES: dict[str, str] = {
    "invalid_grant": (
        "The EHR no longer accepts this connection (it was revoked, expired or left unused too "
        "long). The patient needs to connect again."
    ),
    "invalid_client": (
        "The EHR no longer recognises this application's registration. The operator must fix "
        "the registration, then the patient connects again."
    ),
    "unauthorized_client": (
        "The EHR no longer allows this application to renew access. The operator must fix the "
        "registration, then the patient connects again."
    ),
    "empty_scopes": (
        "The EHR withdrew every permission this connection had. The patient needs to connect again."
    ),
    "invalid_scope": (
        "The EHR no longer grants the permissions this connection had. The patient needs to "
        "connect again."
    ),
    OFFLINE_ACCESS_NOT_GRANTED: OFFLINE_ACCESS_EXPIRED_MESSAGE,
    "tokens_missing": (
        "No tokens are stored for this connection. The patient needs to connect again."
    ),
}
DEFAULT_REAUTH_MESSAGE = (
    "The EHR refused to renew this connection's access. The patient needs to connect again."
)


@dataclass(frozen=True)
class RefreshResult:
    """What one refresh attempt did. Tokens are kept out of ``repr`` by :class:`StoredTokens`."""

    outcome: RefreshOutcome
    #: The current tokens after the call (when known).
    tokens: StoredTokens | None
    message: str | None = None
    retry_at: dt.datetime | None = None
    #: For ``needs_reauth``: the stable reason code and the EHR's error page, if it gave one.
    #: For ``transient``: the failure's reason code when the EHR was asked (None when not).
    reason: str | None = None
    error_uri: str | None = None
    #: For ``refreshed``: the readable types the response took away or gave, if any.
    scope_change: GrantChange | None = None
    #: For ``refreshed`` and ``not_due``: the connection and tenant as the refresh left them,
    #: for a pull that follows at once (see :class:`~syncsvc.sync.connection_read.ConnectionRead`).
    read: ConnectionRead | None = field(default=None, repr=False)


def reauth_message(reason: str) -> str:
    """What a reauth ``reason`` means, in words a patient or operator can act on."""
    return _REAUTH_MESSAGES.get(reason.replace("-", "_"), DEFAULT_REAUTH_MESSAGE)


async def fresh_connection(session: AsyncSession, connection_id: str) -> Connection:
    """The connection read again in ``session``; Conflict if it was deleted meanwhile."""
    connection = await repo.get_connection(session, connection_id)
    if connection is None:
        # Deleted (the patient disconnected) between the two transactions.
        raise Conflict("The connection was deleted during its refresh.")
    return connection


async def mark_needs_reauth(
    session: AsyncSession,
    connection_id: str,
    *,
    reason: str,
    error_uri: str | None,
    tokens: StoredTokens | None,
    now: dt.datetime,
) -> RefreshResult:
    """Mark the connection ``needs_reauth`` and stop scheduling refreshes for it."""
    reason = reason[:REASON_LENGTH]
    message = reauth_message(reason)
    await repo.set_connection_status(
        session,
        connection_id,
        status="needs_reauth",
        now=now,
        reason=reason,
        message=message,
        error_uri=error_uri,
    )
    connection = await fresh_connection(session, connection_id)
    connection.next_refresh_at = None
    connection.backoff_until = None
    return RefreshResult(
        "needs_reauth", tokens, message=message, reason=reason, error_uri=error_uri
    )


async def needs_reauth(
    ctx: SyncContext,
    connection_id: str,
    *,
    reason: str,
    tokens: StoredTokens | None,
    now: dt.datetime,
) -> RefreshResult:
    """:func:`mark_needs_reauth` in a transaction of its own."""
    async with ctx.sessionmaker.begin() as session:
        return await mark_needs_reauth(
            session, connection_id, reason=reason, error_uri=None, tokens=tokens, now=now
        )


async def someone_else_refreshed(
    session: AsyncSession, ctx: SyncContext, previous: StoredTokens
) -> StoredTokens | None:
    """The stored tokens if another writer replaced ``previous`` since it was read, else None."""
    current = await load_tokens(session, ctx.vault, previous.connection_id)
    if current is not None and current.version != previous.version:
        return current
    return None


def theirs(tokens: StoredTokens) -> RefreshResult:
    """The result of a refresh that found another writer's newer tokens stored first."""
    return RefreshResult(
        "refreshed", tokens, message="Another worker stored newer tokens first; using those."
    )


async def record_failure(
    ctx: SyncContext, previous: StoredTokens, error: ReauthRequired | Transient
) -> RefreshResult:
    """Transaction 2 after a failed refresh: needs_reauth, or back off keeping every token."""
    now = ctx.now()
    async with ctx.sessionmaker.begin() as session:
        # A refresh token rotated away by another writer is refused with invalid_grant: that is
        # not the patient's grant failing, and must not cost them the connection.
        current = await someone_else_refreshed(session, ctx, previous)
        if current is not None:
            return theirs(current)
        if isinstance(error, ReauthRequired):
            return await mark_needs_reauth(
                session,
                previous.connection_id,
                reason=error.reason,
                error_uri=error.error_uri,
                tokens=previous,
                now=now,
            )
        connection = await fresh_connection(session, previous.connection_id)
        connection.failure_count += 1
        retry_at = REFRESH_BACKOFF.retry_at(
            now, connection.failure_count, retry_after=error.retry_after
        )
        connection.backoff_until = retry_at
        connection.next_refresh_at = retry_at
        connection.updated_at = now
    return RefreshResult(
        "transient", previous, message=error.message, retry_at=retry_at, reason=error.reason
    )
