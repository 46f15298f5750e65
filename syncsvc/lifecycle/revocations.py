"""Revoking a disconnected connection's token at the EHR (RFC 7009), retried until confirmed.

A disconnect deletes the connection's credentials at once and leaves the one token to revoke in
``pending_revocations``, encrypted and bound to that row. Each attempt follows the house rule of
never holding a transaction across the network: lease the row and decrypt its token (tx 1), call
the revocation endpoint, then delete the row on success or record the failure with backoff
(tx 2). The lease keeps two processes from revoking the same row at once; a crashed attempt's
lease expires and the row is taken over. After :data:`MAX_ATTEMPTS` failures the token is deleted
anyway and the failure recorded as an event: a token nobody holds any more is the next best thing
to a revoked one, and keeping it forever would be worse.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from syncsvc.db import disconnect_repo, repo
from syncsvc.db.event_repo import add_event
from syncsvc.db.models.activity import PendingRevocation
from syncsvc.errors import VaultError
from syncsvc.logging import get_logger
from syncsvc.sync.context import SyncContext
from syncsvc.sync.revocation_attempt import (
    ATTEMPT_TIMEOUT_SECONDS,
    MAX_ATTEMPTS,
    REVOCATION_BACKOFF,
    AttemptOutcome,
    ClaimedRevocation,
    attempt,
)
from syncsvc.sync.revocation_queue import (
    LEASE_SECONDS,
    token_purpose,
)
from syncsvc.sync.tenant_config import client_credentials, revocation_endpoint_refusal
from syncsvc.vault import Vault

log = get_logger("syncsvc.lifecycle.revocations")


DEFAULT_LIMIT = 50
#: Revocation requests one call sends at once. Not ``sync_concurrency`` (hundreds by default):
#: a wave of disconnects is mostly one EHR's, whose revocation endpoint no tenant limit guards,
#: and nothing waits on a revocation. Enough that a full claim ends well within its lease even
#: if every attempt runs to its time limit (50 / 10 x 15 s = 75 s against 120 s).
REVOCATIONS_AT_ONCE = 10


@dataclass
class RevocationReport:
    """What one :func:`retry_pending` call did."""

    claimed: int = 0
    revoked: int = 0
    retrying: int = 0
    given_up: int = 0

    def count(self, outcome: AttemptOutcome) -> None:
        """Count one attempt's outcome."""
        if outcome == "revoked":
            self.revoked += 1
        elif outcome == "retrying":
            self.retrying += 1
        else:
            self.given_up += 1

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return {
            "claimed": self.claimed,
            "revoked": self.revoked,
            "retrying": self.retrying,
            "given_up": self.given_up,
        }


async def _give_up(
    ctx: SyncContext, row: PendingRevocation, *, reason: str, error_class: str
) -> AttemptOutcome:
    """Delete a revocation that cannot succeed (token and row) and record why."""
    async with ctx.sessionmaker.begin() as session:
        if not await disconnect_repo.delete_pending_revocation(session, row.id, ctx.owner):
            return "retrying"
        await add_event(
            session,
            tenant_id=row.tenant_id,
            connection_id=row.connection_id,
            kind="revocation",
            outcome="failed",
            error_class=error_class,
            detail=reason,
            at=ctx.now(),
        )
    log.warning(
        "revocation given up",
        connection_id=row.connection_id,
        revocation_id=row.id,
        error_class=error_class,
    )
    return "given_up"


def _open(vault: Vault, row: PendingRevocation) -> str:
    return vault.decrypt(row.token_enc, purpose=token_purpose(row.token_type_hint), row=row.id)


@dataclass(frozen=True)
class _Hopeless:
    """A claimed row that can never succeed, and why."""

    id: str
    reason: str
    error_class: str


_UNREADABLE = "the token or the client secret can no longer be decrypted (key retired)"


async def _claim(ctx: SyncContext, limit: int) -> tuple[list[ClaimedRevocation], list[_Hopeless]]:
    """Transaction 1: lease due rows and decrypt what each attempt needs.

    Returns the claimed revocations and the rows that can never succeed: the token cannot be
    decrypted any more (its vault key was retired), or the queued endpoint breaks the endpoint
    rules (it was queued from a stored document that predates them); nothing is sent for those.
    """
    claimed: list[ClaimedRevocation] = []
    hopeless: list[_Hopeless] = []
    async with ctx.sessionmaker.begin() as session:
        rows = await disconnect_repo.claim_pending_revocations(
            session, ctx.owner, ctx.now(), LEASE_SECONDS, limit
        )
        for row in rows:
            tenant = await repo.get_tenant(session, row.tenant_id)
            refusal = (
                revocation_endpoint_refusal(tenant, row.revocation_endpoint)
                if tenant is not None
                else None
            )
            if refusal is not None:
                hopeless.append(_Hopeless(row.id, f"not sent: {refusal}", "endpoint_refused"))
                continue
            try:
                token = _open(ctx.vault, row)
                if tenant is None:  # pragma: no cover - the foreign key cascades
                    raise VaultError("The tenant is gone.")
                credentials = client_credentials(ctx.vault, tenant)
            except VaultError:
                hopeless.append(_Hopeless(row.id, _UNREADABLE, "vault_error"))
                continue
            claimed.append(
                ClaimedRevocation(
                    id=row.id,
                    tenant_id=row.tenant_id,
                    connection_id=row.connection_id,
                    revocation_endpoint=row.revocation_endpoint,
                    token_type_hint=row.token_type_hint,
                    attempts=row.attempts,
                    token=token,
                    credentials=credentials,
                )
            )
    return claimed, hopeless


async def _give_up_hopeless(ctx: SyncContext, hopeless: Sequence[_Hopeless]) -> int:
    given_up = 0
    for item in hopeless:
        async with ctx.sessionmaker() as session:
            row = await session.get(PendingRevocation, item.id)
        if row is not None:
            outcome = await _give_up(ctx, row, reason=item.reason, error_class=item.error_class)
            given_up += outcome == "given_up"
    return given_up


async def retry_pending(ctx: SyncContext, limit: int = DEFAULT_LIMIT) -> RevocationReport:
    """Claim up to ``limit`` due revocations and attempt each once (bounded concurrency)."""
    report = RevocationReport()
    claimed, hopeless = await _claim(ctx, limit)
    report.claimed = len(claimed) + len(hopeless)
    report.given_up += await _give_up_hopeless(ctx, hopeless)
    concurrency = asyncio.Semaphore(REVOCATIONS_AT_ONCE)

    async def one(item: ClaimedRevocation) -> None:
        async with concurrency:
            report.count(await attempt(ctx, item, timeout_seconds=ATTEMPT_TIMEOUT_SECONDS))

    async with asyncio.TaskGroup() as group:
        for item in claimed:
            group.create_task(one(item))
    if report.claimed:
        log.info("revocations retried", **report.to_json())
    return report


__all__ = [
    "MAX_ATTEMPTS",
    "REVOCATIONS_AT_ONCE",
    "REVOCATION_BACKOFF",
    "ClaimedRevocation",
    "RevocationReport",
    "attempt",
    "retry_pending",
    "token_purpose",
]
