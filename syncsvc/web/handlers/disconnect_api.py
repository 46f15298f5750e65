"""``DELETE /api/v1/connections/{id}``: the host application disconnects one of its connections.

The connection is disconnected as if the patient had done it (tokens deleted, revocation at the
EHR tried and retried, schedule stopped), with ``disconnected_by_host_app`` as the reason. Synced
data is erased unless ``?erase=false``. Disconnecting twice is fine (204 both times); an unknown
id is 404.
"""

from __future__ import annotations

from aiohttp import web

from syncsvc.errors import BadRequest
from syncsvc.lifecycle.disconnect import disconnect_connection
from syncsvc.web.auth import require_api_key
from syncsvc.web.keys import SERVICES

_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


def _erase(request: web.Request) -> bool:
    raw = request.query.get("erase", "true").lower()
    if raw not in _BOOLEANS:
        raise BadRequest("erase must be true or false.", reason="invalid_erase")
    return _BOOLEANS[raw]


async def delete_connection(request: web.Request) -> web.Response:
    """Disconnect a connection; 204 when done, 404 if there is no such connection."""
    require_api_key(request)
    erase = _erase(request)
    ctx = request.app[SERVICES].sync_context()
    await disconnect_connection(
        ctx, request.match_info["connection_id"], by="host_app", erase=erase
    )
    return web.Response(status=204)


def setup_routes(app: web.Application) -> None:
    """Register the host application's disconnect."""
    app.router.add_delete("/api/v1/connections/{connection_id}", delete_connection)


__all__ = ["setup_routes"]
