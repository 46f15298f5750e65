"""``/.well-known/jwks.json``: the public keys of syncsvc's ``private_key_jwt`` clients.

EHRs fetch this to verify the client assertions syncsvc signs at their token endpoints. Only the
public halves are published; the private keys stay encrypted in the tenants table.
"""

from __future__ import annotations

from aiohttp import web

from syncsvc.db import repo
from syncsvc.keys import SESSIONMAKER, VAULT
from syncsvc.smart.client_auth import public_jwks
from syncsvc.vault import Purpose
from syncsvc.web.handlers.api import json_response

#: EHRs cache the set; a rotated key shows up within this many seconds.
CACHE_SECONDS = 300


async def jwks(request: web.Request) -> web.Response:
    """The JWKS of every registered private key (deduplicated by key id)."""
    vault = request.app[VAULT]
    async with request.app[SESSIONMAKER]() as session:
        tenants = await repo.list_tenants(session)
    pairs: dict[str, tuple[str | None, str]] = {}
    for tenant in tenants:
        if tenant.private_key_enc is None:
            continue
        pem = vault.decrypt(tenant.private_key_enc, purpose=Purpose.PRIVATE_KEY, row=tenant.id)
        pairs.setdefault(tenant.key_id or tenant.id, (tenant.key_id, pem))
    response = json_response(public_jwks(list(pairs.values())))
    response.headers["Cache-Control"] = f"public, max-age={CACHE_SECONDS}"
    return response


def setup_routes(app: web.Application) -> None:
    """Register the JWKS endpoint."""
    app.router.add_get("/.well-known/jwks.json", jwks)
