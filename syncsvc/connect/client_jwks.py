"""The public JWKS of syncsvc's ``private_key_jwt`` clients, built once per change of keys.

Building it decrypts and parses every tenant's private key (tens of milliseconds each), so
doing that per request let anyone fetching ``/.well-known/jwks.json`` burn the event loop. The
set is built when the tenants' keys change, in a worker thread, and served from memory between
changes. A change is noticed from a fingerprint of the key rows (ids, key ids and ciphertexts,
no decryption), read at most once per :data:`RECHECK_SECONDS`: a key registered or rotated by
another process (``tenants add``, ``keys rotate``) is published within that time.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db import repo
from syncsvc.smart.client_auth import public_jwks
from syncsvc.vault import Purpose, Vault

#: How long a built set is served before the key rows are looked at again.
RECHECK_SECONDS = 2.0


@dataclass(frozen=True)
class _Built:
    fingerprint: str
    body: bytes


def _fingerprint(rows: Sequence[repo.PrivateKeyRow]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(orjson.dumps([row.tenant_id, row.key_id, row.private_key_enc]))
    return digest.hexdigest()


class ClientJwks:
    """The served JWKS document of one process, rebuilt only when the key rows change."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        vault: Vault,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._vault = vault
        self._clock = clock
        self._built: _Built | None = None
        self._checked_at = float("-inf")
        self._lock = asyncio.Lock()
        #: How many times the set was built (decrypting keys); operators and tests read it.
        self.builds = 0

    async def body(self) -> bytes:
        """The JWKS as JSON bytes, rebuilt first if the key rows changed since the last look."""
        built = self._built
        if built is not None and self._clock() - self._checked_at < RECHECK_SECONDS:
            return built.body
        # One look (and at most one build) at a time; waiters then take its result.
        async with self._lock:
            built = self._built
            if built is not None and self._clock() - self._checked_at < RECHECK_SECONDS:
                return built.body
            async with self._sessionmaker() as session:
                rows = await repo.private_key_rows(session)
            fingerprint = _fingerprint(rows)
            if built is None or built.fingerprint != fingerprint:
                body = await asyncio.to_thread(self._build, rows)
                built = self._built = _Built(fingerprint, body)
                self.builds += 1
            self._checked_at = self._clock()
            return built.body

    def _build(self, rows: Sequence[repo.PrivateKeyRow]) -> bytes:
        pairs: dict[str, tuple[str | None, str]] = {}
        for row in rows:
            name = row.key_id or row.tenant_id
            if name in pairs:
                continue  # one key shared by many tenants is decrypted once
            pem = self._vault.decrypt(
                row.private_key_enc, purpose=Purpose.PRIVATE_KEY, row=row.tenant_id
            )
            pairs[name] = (row.key_id, pem)
        return orjson.dumps(public_jwks(list(pairs.values())))
