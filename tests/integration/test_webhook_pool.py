"""A webhook receiver inside the network never lends its connection to EHR traffic.

Webhook receivers are configured by the operator and may be internal names; EHR endpoints come
from tenants and must be public. Were both sent through one connection pool, a keep-alive
connection opened to ``https://hooks.internal:PORT`` for a webhook would be reused by an EHR
request to the same host and port (a hostile tenant naming ``https://hooks.internal:PORT/token``)
without the address check made when a connection is opened, and the code, PKCE verifier or
client secret would reach the internal receiver. Real HTTPS on loopback, a test "DNS".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.http import create_http_client, create_webhook_client
from syncsvc.lifecycle import webhooks
from syncsvc.netguard import NonPublicAddress
from syncsvc.settings import Secret, Settings
from syncsvc.sync import webhook_outbox
from syncsvc.sync.context import SyncContext
from syncsvc.vault import Vault
from tests.integration.dbdata import add_connection, add_tenant
from tests.integration.test_ssrf import MapResolver
from tests.integration.tls import LoopbackTls, self_signed

HOOKS = "hooks.internal"


@dataclass
class InternalReceiver:
    """An internal https receiver that records what reaches it, with its connections."""

    tls: LoopbackTls
    port: int = 0
    requests: list[tuple[str, bytes]] = field(default_factory=list)


@pytest.fixture
async def internal() -> AsyncIterator[InternalReceiver]:
    state = InternalReceiver(tls=self_signed(HOOKS))

    async def record(request: web.Request) -> web.Response:
        state.requests.append((request.path, await request.read()))
        return web.json_response({"access_token": "stolen", "token_type": "Bearer"})

    app = web.Application()
    app.router.add_post("/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=state.tls.server)
    await site.start()
    state.port = runner.addresses[0][1]
    try:
        yield state
    finally:
        await runner.cleanup()


async def test_a_token_request_to_the_webhook_receivers_host_never_rides_its_connection(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    internal: InternalReceiver,
) -> None:
    dns = MapResolver({HOOKS: "127.0.0.1"})
    hook_url = f"https://{HOOKS}:{internal.port}/hook"
    configured = settings.replace(webhook_url=hook_url, webhook_secret=Secret("whsec-test"))
    async with (
        create_http_client(resolver=dns, ssl_context=internal.tls.client, total_seconds=10) as http,
        create_webhook_client(resolver=dns, ssl_context=internal.tls.client) as hook_http,
    ):
        ctx = SyncContext(
            settings=configured,
            sessionmaker=sessionmaker,
            vault=Vault.from_settings(configured),
            http=http,
            webhook_http=hook_http,
        )
        now = dt.datetime.now(dt.UTC)
        async with sessionmaker.begin() as session:
            tenant = await add_tenant(session)
            connection = await add_connection(session, tenant, user_id="user-a", patient_id="p-1")
            await webhook_outbox.enqueue(
                session, configured, "sync.completed", connection=connection, data={}, now=now
            )
        report = await webhooks.deliver_due(ctx)
        # The operator's internal receiver is reached: webhooks may go inside the network.
        assert report.delivered == 1
        assert [path for path, _ in internal.requests] == ["/hook"]

        # A hostile tenant's token endpoint names the receiver's host and port. The token
        # exchange goes through the EHR client, which must open (and check) its own connection.
        with pytest.raises(aiohttp.ClientConnectorError) as refused:
            async with http.post(
                f"https://{HOOKS}:{internal.port}/token",
                data={"grant_type": "authorization_code", "code_verifier": "pkce-verifier-x"},
                allow_redirects=False,
            ):
                pass
        assert isinstance(refused.value.os_error, NonPublicAddress)
    assert [path for path, _ in internal.requests] == ["/hook"]
    assert not any(b"pkce-verifier-x" in body for _, body in internal.requests)
