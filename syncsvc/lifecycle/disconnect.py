"""Disconnecting a connection: stop, forget the tokens, erase the data if asked, revoke at the EHR.

One transaction does everything local at once: the connection becomes ``revoked`` (with who did
it as the reason), it leaves the schedule, its credentials are deleted, its synced data is erased
when asked, and the token to revoke (the refresh token; the access token when there is none) is
queued in ``pending_revocations``, encrypted and leased to this call. Only then is the EHR called
(RFC 7009), once and briefly; success deletes the queued row, failure leaves it for
:func:`syncsvc.lifecycle.revocations.retry_pending`. So an EHR that is down cannot leave anything
half-done: the tokens are gone here either way, and the revocation is retried and reported.

The connection row is kept, so the host application can see that (and when) it was disconnected;
a later launch for the same patient reconnects it. Disconnecting again is harmless: it erases
data kept the first time if asked, and reports a revocation still pending.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal, get_args

from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import disconnect_repo, repo
from syncsvc.db.event_repo import add_event
from syncsvc.db.models.connections import Connection, Tenant
from syncsvc.db.stats_repo import count_resources
from syncsvc.errors import NotFound, VaultError
from syncsvc.logging import get_logger
from syncsvc.sync.context import SyncContext
from syncsvc.sync.credentials import load_tokens
from syncsvc.sync.revocation_attempt import ClaimedRevocation, attempt, queue_for_inline_attempt
from syncsvc.sync.revocation_queue import GrantToEnd
from syncsvc.sync.tenant_config import (
    revocation_endpoint,
    revocation_endpoint_refused,
)

log = get_logger("syncsvc.lifecycle.disconnect")

DisconnectedBy = Literal["patient", "host_app", "operator"]
DISCONNECTED_BY: tuple[str, ...] = get_args(DisconnectedBy)
#: ``revoked``: the EHR confirmed. ``pending``: queued, retried in the background.
#: ``not_offered``: the EHR publishes no revocation endpoint. ``nothing_to_revoke``: no token held.
#: ``refused``: the endpoint it publishes breaks the endpoint rules (not https on a public
#: address); the token was not sent there.
RevocationOutcome = Literal["revoked", "pending", "not_offered", "refused", "nothing_to_revoke"]
#: The inline attempt is short: a person is waiting, and a failure is retried anyway.
INLINE_REVOKE_TIMEOUT_SECONDS = 5.0

_MESSAGES = {
    "patient": "The patient disconnected this connection.",
    "host_app": "The application disconnected this connection.",
    "operator": "The service operator disconnected this connection.",
}


@dataclass(frozen=True)
class DisconnectResult:
    """Exactly what a disconnect did, for the result page, the API and the CLI."""

    connection_id: str
    tenant_name: str
    provider: str
    #: The connection was already disconnected before this call.
    already_disconnected: bool
    #: Tokens were stored and are now deleted (False: none were left to delete).
    tokens_deleted: bool
    revocation: RevocationOutcome
    data_erased: bool
    resources_erased: int
    #: Live resources still stored for the connection (0 when erased).
    resources_kept: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "connection_id": self.connection_id,
            "tenant": self.tenant_name,
            "provider": self.provider,
            "already_disconnected": self.already_disconnected,
            "tokens_deleted": self.tokens_deleted,
            "revocation": self.revocation,
            "data_erased": self.data_erased,
            "resources_erased": self.resources_erased,
            "resources_kept": self.resources_kept,
        }


def _stop(connection: Connection, by: DisconnectedBy, now: dt.datetime) -> bool:
    """Mark the connection revoked and unscheduled; returns whether it already was revoked."""
    already = connection.status == "revoked"
    if not already:
        connection.status = "revoked"
        connection.status_reason = f"disconnected_by_{by}"
        connection.status_message = _MESSAGES[by]
        connection.error_uri = None
    connection.next_refresh_at = None
    connection.next_sync_at = None
    connection.backoff_until = None
    connection.failure_count = 0
    connection.updated_at = now
    return already


async def _refusal(
    session: AsyncSession, tenant: Tenant, connection: Connection, now: dt.datetime
) -> str | None:
    """Why the tenant's revocation endpoint is refused for this grant, recorded; None if it is not.

    The token is then not sent (the endpoint breaks the endpoint rules), and the events say so.
    """
    refused = revocation_endpoint_refused(tenant, connection.token_endpoint)
    if refused is None:
        return None
    await add_event(
        session,
        tenant_id=tenant.id,
        connection_id=connection.id,
        kind="revocation",
        outcome="failed",
        error_class="endpoint_refused",
        detail=f"not sent: {refused}",
        at=now,
    )
    log.warning("revocation endpoint refused", connection_id=connection.id, reason=refused)
    return refused


async def disconnect_connection(
    ctx: SyncContext,
    connection_id: str,
    *,
    by: DisconnectedBy,
    erase: bool,
    user_id: str | None = None,
    revoke_timeout_seconds: float = INLINE_REVOKE_TIMEOUT_SECONDS,
) -> DisconnectResult:
    """Disconnect a connection (only if it is ``user_id``'s, when given); NotFound otherwise."""
    now = ctx.now()
    claimed: ClaimedRevocation | None = None
    async with ctx.sessionmaker.begin() as session:
        # Locked first: a pull's write of this record in flight commits before the erase, which
        # then deletes it too, and later writes see the disconnect (syncsvc.db.record_guard).
        connection = await repo.get_connection(session, connection_id, lock=True)
        if connection is None or (user_id is not None and connection.user_id != user_id):
            raise NotFound("No such connection.")
        tenant = await repo.get_tenant(session, connection.tenant_id)
        if tenant is None:  # pragma: no cover - the foreign key forbids it
            raise NotFound("No such connection.")
        try:
            tokens = await load_tokens(session, ctx.vault, connection_id)
        except VaultError:
            # Undecryptable (key retired): nothing can be revoked, but it is deleted all the same.
            log.warning("disconnect with unreadable tokens", connection_id=connection_id)
            tokens = None
        already = _stop(connection, by, now)
        tokens_deleted = await repo.delete_credentials(session, connection_id)
        erased = await disconnect_repo.erase_synced_data(session, connection_id) if erase else 0
        kept = 0 if erase else sum((await count_resources(session, connection_id)).values())
        endpoint = revocation_endpoint(tenant, connection.token_endpoint)
        to_revoke = GrantToEnd.of_stored(tokens, now)
        refused = (
            await _refusal(session, tenant, connection, now) if to_revoke is not None else None
        )
        if to_revoke is not None and endpoint is not None:
            # Leased to this call: a background retry must not race the inline attempt.
            claimed = await queue_for_inline_attempt(
                session,
                ctx.vault,
                tenant=tenant,
                connection_id=connection_id,
                endpoint=endpoint,
                grant=to_revoke,
                owner=ctx.owner,
                now=now,
            )
        still_pending = bool(await disconnect_repo.pending_revocations_of(session, connection_id))
        await add_event(
            session,
            tenant_id=tenant.id,
            connection_id=connection_id,
            kind="disconnect",
            outcome="ok",
            detail=f"by {by.replace('_', ' ')}; data {'erased' if erase else 'kept'}"
            + ("; already disconnected" if already else ""),
            at=now,
        )
        tenant_name, provider = tenant.name, tenant.display_name
    revocation: RevocationOutcome
    if claimed is not None:
        outcome = await attempt(ctx, claimed, timeout_seconds=revoke_timeout_seconds)
        revocation = "revoked" if outcome == "revoked" else "pending"
    elif still_pending:
        revocation = "pending"
    elif to_revoke is not None and refused is not None:
        revocation = "refused"
    elif to_revoke is not None:
        revocation = "not_offered"
    else:
        revocation = "nothing_to_revoke"
    result = DisconnectResult(
        connection_id=connection_id,
        tenant_name=tenant_name,
        provider=provider,
        already_disconnected=already,
        tokens_deleted=tokens_deleted,
        revocation=revocation,
        data_erased=erase,
        resources_erased=erased,
        resources_kept=kept,
    )
    log.info(
        "disconnected",
        connection_id=connection_id,
        tenant=tenant_name,
        by=by,
        revocation=revocation,
        erased=erase,
        already=already,
    )
    return result


__all__ = [
    "DISCONNECTED_BY",
    "DisconnectResult",
    "DisconnectedBy",
    "RevocationOutcome",
    "disconnect_connection",
]
