"""Ending a misbound grant: stop, forget its tokens, ask the EHR to revoke it, keep the data.

A grant is misbound when the EHR issued (or renewed) it for another tenant or another patient
than the connection is bound to: at launch (the token response or a readable token names another
tenant), at a refresh (the response names another tenant or patient) or at run time (the FHIR
server answers ``tenant-mismatch``). Such a grant is live at the EHR but must never be used, so
it ends like a disconnect: in the caller's transaction the connection becomes ``misbound`` and
leaves the schedule, its credentials are deleted and the token that ends the grant is queued for
revocation (RFC 7009) where the tenant offers an endpoint, leased to the caller for one inline
attempt; the scheduler's tick retries it like any other. Records synced while the binding held
are kept, and the message says so.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import repo
from syncsvc.db.event_repo import add_event
from syncsvc.db.models.connections import Connection, Tenant
from syncsvc.db.stats_repo import count_resources
from syncsvc.logging import get_logger
from syncsvc.sync.revocation_attempt import (
    ATTEMPT_TIMEOUT_SECONDS,
    ClaimedRevocation,
    attempt,
    queue_for_inline_attempt,
)
from syncsvc.sync.tenant_config import revocation_endpoint
from syncsvc.vault import Vault

from .context import SyncContext
from .revocation_queue import GrantToEnd

log = get_logger("syncsvc.misbound")

TENANT_MISMATCH = "tenant_mismatch"
PATIENT_MISMATCH = "patient_mismatch"


@dataclass(frozen=True)
class MisboundEnd:
    """What ending a misbound grant did; ``claimed`` is attempted once the caller commits."""

    message: str
    revocation_queued: bool
    records_kept: int
    claimed: ClaimedRevocation | None


def what_happened(provider: str, *, reason: str, foreign: str | None, stage: str) -> str:
    """The first sentence of a misbound connection's message: what the EHR did, and when."""
    if reason == PATIENT_MISMATCH:
        return (
            f"{provider} renewed this connection's sign-in for a different patient record, so "
            "syncsvc stopped using it before reading anything with it."
        )
    named = f" (tenant '{foreign}')" if foreign else ""
    if stage == "launch":
        return (
            f"{provider} issued this sign-in for a different organisation{named}, so it was "
            "not used: no records were read with it."
        )
    if stage == "refresh":
        return (
            f"{provider} renewed this connection's sign-in for a different organisation{named}, "
            "so syncsvc stopped using it before reading anything with it."
        )
    return (
        f"{provider} answered that this connection's sign-in is not valid for its records "
        "server (tenant-mismatch), so syncsvc stopped using it."
    )


def _message(first: str, provider: str, *, queued: bool, kept: int, stage: str) -> str:
    revoked = (
        f"The sign-in was deleted here and {provider} was asked to cancel it."
        if queued
        else "The sign-in was deleted here."
    )
    if stage == "launch" and kept == 0:
        data = ""
    elif kept:
        data = (
            f" The {kept} record(s) synced before this was found are kept; nothing new will be "
            "added."
        )
    else:
        data = " No records had been synced with it."
    return (
        f"{first} {revoked}{data} The service operator must check this provider's registration "
        "(production or sandbox, and which organisation's sign-in it uses); reconnecting will "
        "not help until then."
    )


async def end_misbound(
    session: AsyncSession,
    *,
    vault: Vault,
    owner: str,
    connection: Connection,
    tenant: Tenant,
    grant: GrantToEnd | None,
    reason: str,
    foreign: str | None,
    stage: str,
    now: dt.datetime,
) -> MisboundEnd:
    """Make ``connection`` misbound in the caller's transaction (see the module docstring)."""
    provider = tenant.display_name
    await repo.delete_credentials(session, connection.id)
    endpoint = revocation_endpoint(tenant, connection.token_endpoint)
    claimed: ClaimedRevocation | None = None
    queued = False
    if grant is not None and endpoint is not None:
        claimed = await queue_for_inline_attempt(
            session,
            vault,
            tenant=tenant,
            connection_id=connection.id,
            endpoint=endpoint,
            grant=grant,
            owner=owner,
            now=now,
        )
        queued = True
    kept = sum((await count_resources(session, connection.id)).values())
    first = what_happened(provider, reason=reason, foreign=foreign, stage=stage)
    message = _message(first, provider, queued=queued, kept=kept, stage=stage)
    await repo.set_connection_status(
        session, connection.id, status="misbound", now=now, reason=reason, message=message
    )
    fresh = await repo.get_connection(session, connection.id)
    if fresh is not None:
        fresh.next_refresh_at = None
        fresh.next_sync_at = None
        fresh.backoff_until = None
    await add_event(
        session,
        tenant_id=tenant.id,
        connection_id=connection.id,
        kind="misbound",
        outcome="misbound",
        # No error class: the launch failure, refresh or run that found it carries the class
        # (counting it here too would count one mismatch twice in health).
        detail=f"at {stage}; tokens deleted; revocation {'queued' if queued else 'not offered'}",
        at=now,
    )
    log.warning(
        "misbound",
        connection_id=connection.id,
        tenant=tenant.name,
        reason=reason,
        stage=stage,
        revocation_queued=queued,
    )
    return MisboundEnd(message, queued, kept, claimed)


async def revoke_now(ctx: SyncContext, end: MisboundEnd, *, timeout_seconds: float) -> None:
    """One inline revocation attempt after the caller committed; a failure is retried later."""
    if end.claimed is not None:
        await attempt(ctx, end.claimed, timeout_seconds=timeout_seconds)


__all__ = [
    "ATTEMPT_TIMEOUT_SECONDS",
    "PATIENT_MISMATCH",
    "TENANT_MISMATCH",
    "GrantToEnd",
    "MisboundEnd",
    "end_misbound",
    "revoke_now",
    "what_happened",
]
