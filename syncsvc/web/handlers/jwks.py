"""``/.well-known/jwks.json``: the public keys of syncsvc's ``private_key_jwt`` clients.

EHRs fetch this to verify the client assertions syncsvc signs at their token endpoints. Only the
public halves are published; the private keys stay encrypted in the tenants table. The document
comes from memory (:class:`~syncsvc.connect.client_jwks.ClientJwks`), rebuilt only when keys change.
"""

from __future__ import annotations

from aiohttp import web

from syncsvc.web.keys import CLIENT_JWKS

#: EHRs cache the set; a rotated key shows up within this many seconds.
CACHE_SECONDS = 300


async def jwks(request: web.Request) -> web.Response:
    """The JWKS of every registered private key (deduplicated by key id)."""
    body = await request.app[CLIENT_JWKS].body()
    response = web.Response(body=body, content_type="application/json")
    response.headers["Cache-Control"] = f"public, max-age={CACHE_SECONDS}"
    return response


def setup_routes(app: web.Application) -> None:
    """Register the JWKS endpoint."""
    app.router.add_get("/.well-known/jwks.json", jwks)
