"""Vault key rotation over the database: count ciphertexts per key id and re-encrypt them.

Re-encryption runs in small batches, each in its own short transaction, and every row update is
guarded by the ciphertext it read: a value rewritten concurrently (a token refresh) is left alone,
since the writer already used the current primary key. Running it again is harmless.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncScalarResult, AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute

from syncsvc.vault import Purpose, Vault, key_id_of

from .base import Base, rowcount
from .models.activity import PendingRevocation
from .models.connections import Credential, LaunchAttempt, Tenant

Progress = Callable[[str, int], None]
#: The RFC 7009 type hint of a pending access-token revocation (a name, not a secret).
ACCESS_TOKEN_HINT = "access_token"  # noqa: S105


@dataclass(frozen=True)
class EncryptedColumns:
    """A table's primary key and its ciphertext columns with their vault purposes."""

    table: str
    model: type[Base]
    key: InstrumentedAttribute[str]
    columns: tuple[tuple[InstrumentedAttribute[Any], Purpose], ...]
    #: Set to the new key id when a row is re-encrypted.
    kid_column: str | None = None
    #: Only rows matching this condition (one purpose per spec when a row says its purpose).
    only: Any = None

    def conditions(self) -> list[Any]:
        """The row filter of this spec, as a list for ``where``."""
        return [] if self.only is None else [self.only]


ENCRYPTED: tuple[EncryptedColumns, ...] = (
    EncryptedColumns(
        "tenants",
        Tenant,
        Tenant.id,
        (
            (Tenant.client_secret_enc, Purpose.CLIENT_SECRET),
            (Tenant.private_key_enc, Purpose.PRIVATE_KEY),
        ),
    ),
    EncryptedColumns(
        "credentials",
        Credential,
        Credential.connection_id,
        (
            (Credential.refresh_token_enc, Purpose.REFRESH_TOKEN),
            (Credential.access_token_enc, Purpose.ACCESS_TOKEN),
        ),
        kid_column="key_id",
    ),
    EncryptedColumns(
        "launch_attempts",
        LaunchAttempt,
        LaunchAttempt.id,
        ((LaunchAttempt.code_verifier_enc, Purpose.CODE_VERIFIER),),
    ),
    # A pending revocation's token is sealed under the purpose its RFC 7009 hint names.
    EncryptedColumns(
        "pending_revocations",
        PendingRevocation,
        PendingRevocation.id,
        ((PendingRevocation.token_enc, Purpose.ACCESS_TOKEN),),
        only=PendingRevocation.token_type_hint == ACCESS_TOKEN_HINT,
    ),
    EncryptedColumns(
        "pending_revocations",
        PendingRevocation,
        PendingRevocation.id,
        ((PendingRevocation.token_enc, Purpose.REFRESH_TOKEN),),
        only=PendingRevocation.token_type_hint != ACCESS_TOKEN_HINT,
    ),
)


async def count_by_key_id(session: AsyncSession, batch_size: int = 1000) -> dict[str, int]:
    """How many stored ciphertexts each key id protects."""
    counts: Counter[str] = Counter()
    for spec in ENCRYPTED:
        for column, _ in spec.columns:
            result: AsyncScalarResult[str] = await session.stream_scalars(
                select(column)
                .where(column.is_not(None), *spec.conditions())
                .execution_options(yield_per=batch_size)
            )
            async for value in result:
                counts[key_id_of(value)] += 1
    return dict(counts)


@dataclass(frozen=True)
class Sample:
    """One stored ciphertext with what binds it: enough to decrypt it again."""

    ciphertext: str = field(repr=False)
    purpose: Purpose
    row: str


async def samples_by_key_id(
    session: AsyncSession, per_key: int = 3, batch_size: int = 1000
) -> dict[str, list[Sample]]:
    """Up to ``per_key`` stored ciphertexts of each key id, from as many columns as there are."""
    samples: dict[str, list[Sample]] = {}
    for spec in ENCRYPTED:
        for column, purpose in spec.columns:
            result = await session.stream(
                select(spec.key, column)
                .where(column.is_not(None), *spec.conditions())
                .execution_options(yield_per=batch_size)
            )
            async for row_id, value in result:
                ciphertext = str(value)
                found = samples.setdefault(key_id_of(ciphertext), [])
                if len(found) < per_key:
                    found.append(Sample(ciphertext, purpose, str(row_id)))
            await result.close()
    return samples


def _stale(column: InstrumentedAttribute[Any], prefix: str) -> Any:
    # substr, not LIKE: key ids may contain '_', a LIKE wildcard.
    return func.substr(column, 1, len(prefix)) != prefix


async def reencrypt_all(
    sessionmaker: async_sessionmaker[AsyncSession],
    vault: Vault,
    *,
    batch_size: int = 200,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Re-encrypt every ciphertext not under the primary key; returns rows rewritten per table."""
    prefix = f"v1.{vault.primary_kid}."
    rewritten: dict[str, int] = {}
    for spec in ENCRYPTED:
        stale = or_(*(_stale(column, prefix) for column, _ in spec.columns))
        done = 0
        after = ""
        # Keyset pagination by primary key: every batch moves forward, so the loop ends even if
        # some rows cannot be rewritten (changed concurrently).
        while True:
            async with sessionmaker.begin() as session:
                rows = (
                    await session.execute(
                        select(spec.key, *(column for column, _ in spec.columns))
                        .where(spec.key > after, stale, *spec.conditions())
                        .order_by(spec.key)
                        .limit(batch_size)
                    )
                ).all()
                for row in rows:
                    row_id, values = str(row[0]), list(row[1:])
                    done += await _rewrite_row(session, spec, vault, row_id, values)
            if not rows:
                break
            after = rows[-1][0]
            if progress is not None:
                progress(spec.table, done)
        rewritten[spec.table] = rewritten.get(spec.table, 0) + done
    return rewritten


async def _rewrite_row(
    session: AsyncSession, spec: EncryptedColumns, vault: Vault, row_id: str, values: list[Any]
) -> int:
    changes: dict[str, Any] = {}
    guards = [spec.key == row_id]
    for (column, purpose), value in zip(spec.columns, values, strict=True):
        if value is None:
            guards.append(column.is_(None))
            continue
        guards.append(column == value)
        if vault.needs_rotation(value):
            changes[column.key] = vault.reencrypt(value, purpose=purpose, row=row_id)
    if not changes:
        return 0
    if spec.kid_column is not None:
        changes[spec.kid_column] = vault.primary_kid
    result = await session.execute(
        update(spec.model)
        .where(*guards)
        .values(**changes)
        .execution_options(synchronize_session=False)
    )
    return int(rowcount(result) == 1)
