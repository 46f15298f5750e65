"""A refresh that changes the grant: narrowed or widened scopes recorded where they show.

A refresh response may carry a ``scope`` that differs from the grant on record: the EHR (or the
patient, at the EHR) took permissions away or gave more. What the response says becomes the
grant on record; the types it took away become ``withdrawn`` (their data is kept) with an event
each, the types it gave are pulled next, and the host application hears
``connection.scopes_changed``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import repo
from syncsvc.db.event_repo import add_event
from syncsvc.db.models.connections import Connection
from syncsvc.logging import get_logger
from syncsvc.smart.oauth import TokenResponse
from syncsvc.sync import webhook_outbox
from syncsvc.vocabulary import SCOPES_WITHDRAWN

from .context import SyncContext
from .grant_states import (
    GrantChange,
    grant_change,
    readable_types,
    reconcile_type_states,
    record_withdrawn_parts,
    rescoped,
)

log = get_logger("syncsvc.sync.refresh")


async def widened_since(
    session: AsyncSession, tenant_id: str, granted: Sequence[str], before: Sequence[str]
) -> bool:
    """Whether a connection's grant (``granted``, at tenant ``tenant_id``) reads more than
    ``before`` (a run's grant) did: a refresh during the run widened it, and what it added was
    not in the run's plan."""
    if list(granted) == list(before):
        return False
    tenant = await repo.get_tenant(session, tenant_id)
    if tenant is None:  # pragma: no cover - the foreign key forbids it
        return False
    change = grant_change(tenant, before, granted)
    return bool(change.added or change.widened)


def _parts(parts: tuple[str, ...]) -> str:
    return "the whole type" if parts == ("*",) else ", ".join(parts)


async def rescope(
    ctx: SyncContext,
    session: AsyncSession,
    connection: Connection,
    response: TokenResponse,
    *,
    holds_refresh_token: bool,
    now: dt.datetime,
) -> GrantChange | None:
    """Record the grant a refresh response describes, when it changed (in the caller's tx).

    A narrowed grant marks the types it took away ``withdrawn`` (their data is kept), records
    one ``scope_withdrawn`` event per type and, when no readable type is left, makes the
    connection ``no_access``. A widened grant makes the connection due for a pull of its new
    types. Either way the host application hears ``connection.scopes_changed``.
    """
    if not response.scope_returned or not response.scopes:
        return None  # a response without ``scope`` says nothing about the grant
    granted = rescoped(
        connection.granted_scopes,
        connection.requested_scopes,
        response.scopes,
        holds_refresh_token=holds_refresh_token,
    )
    if granted is None:
        return None
    tenant = await repo.get_tenant(session, connection.tenant_id)
    if tenant is None:  # pragma: no cover - the foreign key forbids it
        return None
    change = grant_change(tenant, connection.granted_scopes, granted)
    connection.granted_scopes = granted
    if not change.changed:
        return None
    await reconcile_type_states(session, connection, tenant, now=now)
    await record_withdrawn_parts(session, connection.id, change.narrowed, now=now)
    if not readable_types(granted, tenant):
        connection.status = "no_access"
        connection.status_reason = SCOPES_WITHDRAWN
        connection.status_message = None
        connection.error_uri = None
        connection.next_sync_at = None
        connection.next_refresh_at = None
    elif change.added or change.widened:
        connection.next_sync_at = now
    for resource_type in change.withdrawn:
        await add_event(
            session,
            tenant_id=connection.tenant_id,
            connection_id=connection.id,
            kind="scopes",
            outcome="withdrawn",
            at=now,
            error_class="scope_withdrawn",
            resource_type=resource_type,
            detail=f"A refresh narrowed the grant: {resource_type} is no longer granted.",
        )
    for resource_type in change.added:
        await add_event(
            session,
            tenant_id=connection.tenant_id,
            connection_id=connection.id,
            kind="scopes",
            outcome="added",
            at=now,
            resource_type=resource_type,
            detail=f"A refresh widened the grant: {resource_type} is now granted.",
        )
    for resource_type, parts in change.narrowed.items():
        await add_event(
            session,
            tenant_id=connection.tenant_id,
            connection_id=connection.id,
            kind="scopes",
            outcome="narrowed",
            at=now,
            error_class="scope_withdrawn",
            resource_type=resource_type,
            detail=f"A refresh narrowed the grant of {resource_type}: "
            f"{_parts(parts)} no longer granted.",
        )
    for resource_type, parts in change.widened.items():
        await add_event(
            session,
            tenant_id=connection.tenant_id,
            connection_id=connection.id,
            kind="scopes",
            outcome="widened",
            at=now,
            resource_type=resource_type,
            detail=f"A refresh widened the grant of {resource_type}: {_parts(parts)} now granted.",
        )
    await session.flush()
    await webhook_outbox.enqueue(
        session,
        ctx.settings,
        "connection.scopes_changed",
        connection=connection,
        data={
            "withdrawn": list(change.withdrawn),
            "added": list(change.added),
            "narrowed": {t: list(p) for t, p in change.narrowed.items()},
            "widened": {t: list(p) for t, p in change.widened.items()},
        },
        now=now,
    )
    log.info(
        "grant changed at refresh",
        connection_id=connection.id,
        withdrawn=list(change.withdrawn),
        added=list(change.added),
        narrowed=sorted(change.narrowed),
        widened=sorted(change.widened),
        status=connection.status,
    )
    return change
