"""A connection's tokens at rest: decrypted on read, merged and encrypted on write.

The launch writes the first tokens; every refresh writes the next ones with compare-and-swap on
the credential version, so a writer that lost a race learns it (``Conflict``) instead of
overwriting a newer rotated refresh token with an older one. Merging follows what EHRs do: a
refresh response without ``refresh_token`` keeps the old one (Cerner never rotates), a new one
replaces it (Epic may rotate), and a known refresh-token expiry survives responses that omit it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import repo
from syncsvc.db.models.connections import Credential
from syncsvc.smart.oauth import TokenResponse
from syncsvc.vault import Purpose, Vault

#: Non-standard but common (Epic, several gateways): lifetime of the refresh token itself.
REFRESH_EXPIRY_FIELDS = ("refresh_token_expires_in", "refresh_expires_in")


@dataclass(frozen=True)
class StoredTokens:
    """A connection's decrypted tokens and the credential version they were read at."""

    connection_id: str
    version: int
    access_token: str | None = field(repr=False)
    access_expires_at: dt.datetime | None
    refresh_token: str | None = field(repr=False)
    refresh_expires_at: dt.datetime | None

    def access_valid(self, now: dt.datetime, margin_seconds: float = 0) -> bool:
        """Whether the access token exists and lives at least ``margin_seconds`` past ``now``."""
        return (
            self.access_token is not None
            and self.access_expires_at is not None
            and self.access_expires_at > now + dt.timedelta(seconds=margin_seconds)
        )


async def load_tokens(
    session: AsyncSession, vault: Vault, connection_id: str
) -> StoredTokens | None:
    """The tokens of ``connection_id`` read fresh from the database, or None if none are stored."""
    row = await repo.get_credentials(session, connection_id)
    return None if row is None else tokens_of(vault, row)


def tokens_of(vault: Vault, row: Credential) -> StoredTokens:
    """The decrypted tokens of a credential row read by the caller."""
    connection_id = row.connection_id
    return StoredTokens(
        connection_id=connection_id,
        version=row.version,
        access_token=_open(vault, row.access_token_enc, Purpose.ACCESS_TOKEN, connection_id),
        access_expires_at=row.access_expires_at,
        refresh_token=_open(vault, row.refresh_token_enc, Purpose.REFRESH_TOKEN, connection_id),
        refresh_expires_at=row.refresh_expires_at,
    )


def _open(vault: Vault, ciphertext: str | None, purpose: Purpose, row: str) -> str | None:
    return None if ciphertext is None else vault.decrypt(ciphertext, purpose=purpose, row=row)


def refresh_expiry(response: TokenResponse, now: dt.datetime) -> dt.datetime | None:
    """When the refresh token of ``response`` expires, if the EHR said (non-standard fields)."""
    for name in REFRESH_EXPIRY_FIELDS:
        value = response.extra.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return now + dt.timedelta(seconds=float(value))
    return None


async def save_tokens(
    session: AsyncSession,
    vault: Vault,
    connection_id: str,
    response: TokenResponse,
    *,
    previous: StoredTokens | None,
    now: dt.datetime,
    replace: bool = False,
) -> StoredTokens:
    """Store ``response`` merged over ``previous``; Conflict if the stored version moved on.

    ``previous=None`` creates the credential row (a launch); otherwise the write only succeeds
    if nobody wrote since ``previous`` was read. The caller commits this before using the new
    access token, so a crash right after the EHR rotated the refresh token loses nothing.
    ``replace`` (a new launch) keeps nothing of ``previous``: a patient who consented again without
    offline access must not have the old grant's refresh token kept alive.
    """
    if response.refresh_token is not None or replace:
        refresh_token: str | None = response.refresh_token
        refresh_expires_at = refresh_expiry(response, now)
    else:
        refresh_token = previous.refresh_token if previous else None
        refresh_expires_at = previous.refresh_expires_at if previous else None
    access_expires_at = dt.datetime.fromtimestamp(response.expires_at, dt.UTC)
    version = await repo.upsert_credentials(
        session,
        connection_id,
        expected_version=previous.version if previous else None,
        key_id=vault.primary_kid,
        refresh_token_enc=None
        if refresh_token is None
        else vault.encrypt(refresh_token, purpose=Purpose.REFRESH_TOKEN, row=connection_id),
        access_token_enc=vault.encrypt(
            response.access_token, purpose=Purpose.ACCESS_TOKEN, row=connection_id
        ),
        access_expires_at=access_expires_at,
        refresh_expires_at=refresh_expires_at,
        now=now,
    )
    return StoredTokens(
        connection_id=connection_id,
        version=version,
        access_token=response.access_token,
        access_expires_at=access_expires_at,
        refresh_token=refresh_token,
        refresh_expires_at=refresh_expires_at,
    )
