"""One attempt to revoke a queued token at the EHR (RFC 7009), and what its outcome records.

The caller holds the row's lease and has decrypted what the attempt needs
(:class:`ClaimedRevocation`); no transaction is open across the call. A confirmed revocation
deletes the row and its token; a failure reschedules it with backoff until :data:`MAX_ATTEMPTS`,
then deletes it anyway and records the failure. A misbound grant's inline attempt
(:mod:`syncsvc.sync.misbound`) and the background retries (:mod:`syncsvc.lifecycle.revocations`)
both come here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import disconnect_repo
from syncsvc.db.event_repo import add_event
from syncsvc.db.models.connections import Tenant
from syncsvc.errors import SyncsvcError, VaultError
from syncsvc.logging import get_logger
from syncsvc.smart.client_auth import ClientCredentials
from syncsvc.smart.oauth import revoke_token
from syncsvc.sync.backoff import Backoff
from syncsvc.sync.context import SyncContext
from syncsvc.sync.revocation_queue import GrantToEnd, queue_revocation
from syncsvc.sync.tenant_config import client_credentials
from syncsvc.vault import Vault

log = get_logger("syncsvc.sync.revocation_attempt")


AttemptOutcome = Literal["revoked", "retrying", "given_up"]


#: Failed revocations are retried on this schedule: within minutes first, then up to 6 h apart.
REVOCATION_BACKOFF = Backoff(base_seconds=60.0, cap_seconds=6 * 3600.0)


#: After this many failed attempts (spread over up to a day by the backoff) the token is dropped.
MAX_ATTEMPTS = 12


#: A background attempt's time limit (the disconnect itself waits less: see ``disconnect``).
ATTEMPT_TIMEOUT_SECONDS = 15.0


#: ``pending_revocations.last_error`` is for people: keep it short.
ERROR_LENGTH = 500


@dataclass(frozen=True)
class ClaimedRevocation:
    """A leased pending revocation with what the attempt needs, decrypted."""

    id: str
    tenant_id: str
    connection_id: str | None
    revocation_endpoint: str
    token_type_hint: str
    attempts: int
    token: str = field(repr=False)
    credentials: ClientCredentials = field(repr=False)


async def attempt(
    ctx: SyncContext, claimed: ClaimedRevocation, *, timeout_seconds: float
) -> AttemptOutcome:
    """Call the EHR once for a leased revocation, then record the outcome (its own transaction).

    ``revoked``: confirmed, row and token deleted. ``retrying``: rescheduled with backoff.
    ``given_up``: the last allowed attempt failed; row and token deleted, failure recorded.
    """
    error_class = "revocation_failed"
    try:
        async with asyncio.timeout(timeout_seconds):
            await revoke_token(
                ctx.http,
                revocation_endpoint=claimed.revocation_endpoint,
                token=claimed.token,
                token_type_hint=claimed.token_type_hint,
                credentials=claimed.credentials,
            )
    except TimeoutError:
        error, error_class = "The revocation endpoint did not answer in time.", "timeout"
    except SyncsvcError as exc:
        # Transient (5xx, 429, network) and client-authentication problems alike: retry later.
        error = exc.message
    else:
        return await _confirmed(ctx, claimed)
    return await _failed(ctx, claimed, error=error, error_class=error_class)


async def _confirmed(ctx: SyncContext, claimed: ClaimedRevocation) -> AttemptOutcome:
    async with ctx.sessionmaker.begin() as session:
        await disconnect_repo.delete_pending_revocation(session, claimed.id, ctx.owner)
        await add_event(
            session,
            tenant_id=claimed.tenant_id,
            connection_id=claimed.connection_id,
            kind="revocation",
            outcome="ok",
            detail=f"{claimed.token_type_hint} revoked after {claimed.attempts + 1} attempt(s)",
            at=ctx.now(),
        )
    log.info("token revoked", connection_id=claimed.connection_id, attempts=claimed.attempts + 1)
    return "revoked"


async def _failed(
    ctx: SyncContext, claimed: ClaimedRevocation, *, error: str, error_class: str
) -> AttemptOutcome:
    now = ctx.now()
    attempts = claimed.attempts + 1
    async with ctx.sessionmaker.begin() as session:
        if attempts >= MAX_ATTEMPTS:
            deleted = await disconnect_repo.delete_pending_revocation(
                session, claimed.id, ctx.owner
            )
            outcome: AttemptOutcome = "given_up" if deleted else "retrying"
            detail = f"gave up after {attempts} attempts: {error}"
        else:
            await disconnect_repo.reschedule_pending_revocation(
                session,
                claimed.id,
                ctx.owner,
                attempts=attempts,
                next_attempt_at=REVOCATION_BACKOFF.retry_at(now, attempts),
                last_error=error[:ERROR_LENGTH],
            )
            outcome, detail = "retrying", f"attempt {attempts} failed: {error}"
        await add_event(
            session,
            tenant_id=claimed.tenant_id,
            connection_id=claimed.connection_id,
            kind="revocation",
            outcome="failed" if outcome == "given_up" else "transient",
            error_class=error_class,
            detail=detail,
            at=now,
        )
    log.warning(
        "revocation failed",
        connection_id=claimed.connection_id,
        attempts=attempts,
        outcome=outcome,
        error_class=error_class,
    )
    return outcome


async def queue_for_inline_attempt(
    session: AsyncSession,
    vault: Vault,
    *,
    tenant: Tenant,
    connection_id: str,
    endpoint: str,
    grant: GrantToEnd,
    owner: str,
    now: dt.datetime,
) -> ClaimedRevocation | None:
    """Queue ``grant`` leased to ``owner`` in the caller's transaction, for one inline attempt.

    Returns what :func:`attempt` needs once the caller has committed, or None when the tenant's
    client secret cannot be decrypted (key retired): then no attempt is made now and the
    background retries the queued row (and gives it up if the secret stays unreadable).
    """
    revocation_id = await queue_revocation(
        session,
        vault,
        tenant_id=tenant.id,
        connection_id=connection_id,
        endpoint=endpoint,
        grant=grant,
        now=now,
        lease_owner=owner,
    )
    try:
        credentials = client_credentials(vault, tenant)
    except VaultError:
        log.warning("revocation queued without client credentials", tenant=tenant.name)
        return None
    return ClaimedRevocation(
        id=revocation_id,
        tenant_id=tenant.id,
        connection_id=connection_id,
        revocation_endpoint=endpoint,
        token_type_hint=grant.hint,
        attempts=0,
        token=grant.token,
        credentials=credentials,
    )
