"""Storing a finished launch: the (tenant, user, patient) connection, its binding and its tokens.

A grant that can read nothing is stored ``no_access`` and never scheduled; a grant issued for
another tenant is stored ``misbound``, its tokens never kept and its revocation queued and tried
once while the patient waits. When that misbound launch replaces an earlier grant of the same
patient, the earlier grant ends too: its tokens are deleted and revoked at the EHR the same way,
never just forgotten while still live there. Two callbacks racing for the same patient end in
one row.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.connect.grant import Exchange
from syncsvc.db import repo
from syncsvc.db.models.connections import Connection, Tenant
from syncsvc.errors import LaunchError
from syncsvc.sync import webhook_outbox
from syncsvc.sync.context import SyncContext
from syncsvc.sync.credentials import load_tokens, refresh_expiry, save_tokens
from syncsvc.sync.grant_states import readable_types, reconcile_type_states
from syncsvc.sync.misbound import TENANT_MISMATCH, GrantToEnd, end_misbound, revoke_now
from syncsvc.sync.refresh_schedule import RefreshSchedule, next_refresh_at
from syncsvc.sync.revocation_attempt import ClaimedRevocation, attempt, queue_for_inline_attempt
from syncsvc.sync.tenant_config import revocation_endpoint
from syncsvc.vault import Vault
from syncsvc.vocabulary import NO_READABLE_TYPE

#: The inline revocation attempt of a misbound grant is short: a person is waiting.
INLINE_REVOKE_TIMEOUT_SECONDS = 5.0


async def store_connection(
    ctx: SyncContext, exchange: Exchange, mismatch: str | None, now: dt.datetime
) -> Connection:
    """Create or update the (tenant, user, patient) connection with its binding and tokens."""
    tenant, config, tokens = exchange.tenant, exchange.config, exchange.tokens
    binding: dict[str, Any] = {
        "fhir_base": tenant.fhir_base,
        "aud": tenant.fhir_base,
        "issuer": config.issuer or tenant.issuer,
        "token_endpoint": config.token_endpoint,
        "client_id": tenant.client_id,
        "requested_scopes": exchange.requested,
        "granted_scopes": exchange.granted,
    }
    if mismatch is None and not readable_types(exchange.granted, tenant):
        # Nothing the grant covers can be read: never ``active``, nothing is scheduled.
        status: dict[str, Any] = {
            "status": "no_access",
            "status_reason": NO_READABLE_TYPE,
            "status_message": None,
            "error_uri": None,
            "next_sync_at": None,
            "next_refresh_at": None,
        }
    elif mismatch is None:
        expires = dt.datetime.fromtimestamp(tokens.expires_at, dt.UTC)
        status = {
            "status": "active",
            "status_reason": None,
            "status_message": None,
            "error_uri": None,
            "next_sync_at": now,
            # Without a refresh token the grant is looked at again when its access token
            # expires: it then needs the patient (offline_access_not_granted).
            "next_refresh_at": next_refresh_at(
                RefreshSchedule.from_settings(ctx.settings),
                now=now,
                access_expires_at=expires,
                last_refresh_at=None,
                next_sync_at=now,
                connected_at=now,
                has_refresh_token=tokens.refresh_token is not None,
                refresh_expires_at=refresh_expiry(tokens, now),
            ),
        }
    else:
        # Made misbound (tokens deleted, revocation queued) by end_misbound below.
        status = {"next_sync_at": None, "next_refresh_at": None, "error_uri": None}
    for _ in range(2):
        try:
            async with ctx.sessionmaker.begin() as session:
                connection, replaced = await _upsert_connection(
                    session,
                    ctx.vault,
                    exchange,
                    {**binding, **status},
                    store_tokens=mismatch is None,
                    now=now,
                )
                ended = None
                earlier: ClaimedRevocation | None = None
                if replaced is not None:
                    earlier = await _end_replaced(
                        session,
                        ctx,
                        tenant=tenant,
                        connection=connection,
                        replaced=replaced,
                        now=now,
                    )
                if mismatch is not None:
                    ended = await end_misbound(
                        session,
                        vault=ctx.vault,
                        owner=ctx.owner,
                        connection=connection,
                        tenant=tenant,
                        grant=GrantToEnd.of(tokens.refresh_token, tokens.access_token),
                        reason=TENANT_MISMATCH,
                        foreign=mismatch,
                        stage="launch",
                        now=now,
                    )
                    await session.refresh(connection)
                    # The host application hears of it as of a misbound run (same words).
                    await webhook_outbox.enqueue(
                        session,
                        ctx.settings,
                        "connection.misbound",
                        connection=connection,
                        data={
                            "reason": connection.status_reason,
                            "message": connection.status_message,
                            "error_uri": connection.error_uri,
                        },
                        now=now,
                    )
        except IntegrityError:
            # Two callbacks for the same patient raced to insert; the second updates instead.
            continue
        if ended is not None:
            # The patient is waiting: one short attempt now, the tick retries a failure.
            await revoke_now(ctx, ended, timeout_seconds=INLINE_REVOKE_TIMEOUT_SECONDS)
        if earlier is not None:
            await attempt(ctx, earlier, timeout_seconds=INLINE_REVOKE_TIMEOUT_SECONDS)
        return connection
    raise LaunchError("The connection could not be saved. Please start again.", reason="conflict")


async def _upsert_connection(
    session: AsyncSession,
    vault: Vault,
    exchange: Exchange,
    columns: dict[str, Any],
    *,
    store_tokens: bool,
    now: dt.datetime,
) -> tuple[Connection, _Replaced | None]:
    """The connection, and the earlier grant it held when the new one is not stored (misbound)."""
    launch, tokens = exchange.attempt, exchange.tokens
    patient_id = tokens.patient or ""
    connection = await repo.find_connection(
        session, tenant_id=exchange.tenant.id, user_id=launch.user_id, patient_id=patient_id
    )
    # Where the grant held until now was issued, before the new binding overwrites it.
    earlier_token_endpoint = str(
        columns["token_endpoint"] if connection is None else connection.token_endpoint
    )
    if connection is None:
        connection = await repo.create_connection(
            session,
            tenant_id=exchange.tenant.id,
            user_id=launch.user_id,
            patient_id=patient_id,
            now=now,
            **columns,
        )
    else:
        for name, value in columns.items():
            setattr(connection, name, value)
        connection.connected_at = now
        connection.updated_at = now
        connection.failure_count = 0
        connection.backoff_until = None
        await session.flush()
    previous = await load_tokens(session, vault, connection.id)
    if store_tokens:
        await save_tokens(
            session, vault, connection.id, tokens, previous=previous, now=now, replace=True
        )
        await reconcile_type_states(session, connection, exchange.tenant, now=now)
        return connection, None
    if previous is None:
        return connection, None
    await repo.delete_credentials(session, connection.id)
    grant = GrantToEnd.of_stored(previous, now)
    if grant is None:
        return connection, None
    return connection, _Replaced(grant, earlier_token_endpoint)


@dataclass(frozen=True)
class _Replaced:
    """An earlier grant of the connection that a misbound launch ends, and where it was issued."""

    grant: GrantToEnd
    token_endpoint: str


async def _end_replaced(
    session: AsyncSession,
    ctx: SyncContext,
    *,
    tenant: Tenant,
    connection: Connection,
    replaced: _Replaced,
    now: dt.datetime,
) -> ClaimedRevocation | None:
    """Queue the earlier grant's revocation, leased for one inline attempt; None when the tenant
    offers no revocation endpoint (the tokens are deleted all the same)."""
    endpoint = revocation_endpoint(tenant, replaced.token_endpoint)
    if endpoint is None:
        return None
    return await queue_for_inline_attempt(
        session,
        ctx.vault,
        tenant=tenant,
        connection_id=connection.id,
        endpoint=endpoint,
        grant=replaced.grant,
        owner=ctx.owner,
        now=now,
    )
