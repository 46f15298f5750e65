"""Queueing a token for revocation at the EHR (RFC 7009): sealed, bound to its row, due now.

Every path that ends a live grant here (a disconnect, a misbound grant, a refresh whose
connection was disconnected while the EHR answered) leaves the one token that ends it in
``pending_revocations`` through :func:`queue_revocation`: encrypted with the vault, bound to the
new row's id, and optionally leased to the caller for one inline attempt. Attempting and
retrying the queued rows is :mod:`syncsvc.lifecycle.revocations`' job.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import disconnect_repo
from syncsvc.db.columns import new_id
from syncsvc.sync.credentials import StoredTokens
from syncsvc.vault import Purpose, Vault

# S105: RFC 7009 token type hints, not secrets.
REFRESH_TOKEN_HINT = "refresh_token"  # noqa: S105
ACCESS_TOKEN_HINT = "access_token"  # noqa: S105
#: How long one attempt may hold a row; far above any revocation request's duration.
LEASE_SECONDS = 120


def token_purpose(token_type_hint: str) -> Purpose:
    """The vault purpose a pending token is sealed under, from its RFC 7009 type hint."""
    if token_type_hint == ACCESS_TOKEN_HINT:
        return Purpose.ACCESS_TOKEN
    return Purpose.REFRESH_TOKEN


@dataclass(frozen=True)
class GrantToEnd:
    """The live token that ends a grant when revoked, with its RFC 7009 type hint."""

    token: str = field(repr=False)
    hint: str

    @classmethod
    def of(cls, refresh_token: str | None, access_token: str | None) -> GrantToEnd | None:
        """The refresh token if there is one (revoking it ends its access tokens too)."""
        if refresh_token:
            return cls(refresh_token, REFRESH_TOKEN_HINT)
        if access_token:
            return cls(access_token, ACCESS_TOKEN_HINT)
        return None

    @classmethod
    def of_stored(cls, tokens: StoredTokens | None, now: dt.datetime) -> GrantToEnd | None:
        """What ends a stored grant: its refresh token, else an access token still valid."""
        if tokens is None:
            return None
        live_access = tokens.access_token if tokens.access_valid(now) else None
        return cls.of(tokens.refresh_token, live_access)


async def queue_revocation(
    session: AsyncSession,
    vault: Vault,
    *,
    tenant_id: str,
    connection_id: str,
    endpoint: str,
    grant: GrantToEnd,
    now: dt.datetime,
    lease_owner: str | None = None,
) -> str:
    """Queue ``grant`` for revocation at ``endpoint`` in the caller's transaction; its row id.

    With ``lease_owner`` the row is leased to that owner for :data:`LEASE_SECONDS`, so a
    background retry does not race the caller's own inline attempt.
    """
    revocation_id = new_id()
    await disconnect_repo.add_pending_revocation(
        session,
        revocation_id=revocation_id,
        tenant_id=tenant_id,
        connection_id=connection_id,
        revocation_endpoint=endpoint,
        token_enc=vault.encrypt(grant.token, purpose=token_purpose(grant.hint), row=revocation_id),
        token_type_hint=grant.hint,
        now=now,
        lease_owner=lease_owner,
        lease_until=None if lease_owner is None else now + dt.timedelta(seconds=LEASE_SECONDS),
    )
    return revocation_id


__all__ = [
    "ACCESS_TOKEN_HINT",
    "LEASE_SECONDS",
    "REFRESH_TOKEN_HINT",
    "GrantToEnd",
    "queue_revocation",
    "token_purpose",
]
