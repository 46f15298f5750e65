"""``/.well-known/jwks.json`` is built once per change of keys, not once per request.

Each unauthenticated request used to decrypt and parse every private_key_jwt tenant's key on the
event loop (a CPU amplifier: 20 requests/s slowed every other request by two orders of
magnitude). Now a burst of requests costs one build, and a key registered later is published
without a restart.
"""

from __future__ import annotations

import asyncio
import datetime as dt

from syncsvc.directory.tenants import TenantSpec, register_tenant
from syncsvc.smart.client_auth import generate_private_key
from syncsvc.web.keys import CLIENT_JWKS, SERVICES
from tests.fixtures.sandbox import EPIC_TENANT, GENERIC_TENANT
from tests.integration.web.flows import Flow
from tests.integration.web.service import PKJWT_CLIENT

BURST = 60


async def _kids(flow: Flow) -> list[str]:
    async with flow.http.get(f"{flow.service.origin}/.well-known/jwks.json") as response:
        assert response.status == 200
        assert response.headers["Cache-Control"].startswith("public, max-age=")
        document = await response.json()
    return sorted(key["kid"] for key in document["keys"])


async def test_a_burst_of_requests_builds_the_set_once(flow: Flow, pkjwt_private_key: str) -> None:
    await flow.register(
        EPIC_TENANT, name="epic", auth="private_key_jwt", private_key=pkjwt_private_key
    )
    jwks = flow.service.app[CLIENT_JWKS]
    answers = await asyncio.gather(*(_kids(flow) for _ in range(BURST)))
    assert answers == [["syncsvc-test-key"]] * BURST
    assert jwks.builds == 1

    # A key added meanwhile (as `tenants add` in another process would) is published once the
    # served set is looked at again, with exactly one more build.
    second = generate_private_key("EC", kid="second-key")
    await register_tenant(
        flow.service.app[SERVICES].sessionmaker,
        flow.service.vault,
        flow.http,
        TenantSpec(
            name="generic",
            fhir_base=flow.sandbox.urls(GENERIC_TENANT).fhir_base,
            client_id=PKJWT_CLIENT,
            redirect_uri=flow.service.callback_for("generic"),
            auth_method="private_key_jwt",
            private_key_pem=second,
            key_id="second-key",
        ),
        now=dt.datetime.now(dt.UTC),
    )
    for _ in range(100):  # bounded: the set is looked at again within seconds
        kids = await _kids(flow)
        if len(kids) == 2:
            break
        await asyncio.sleep(0.1)
    assert kids == ["second-key", "syncsvc-test-key"]
    assert jwks.builds == 2
    await asyncio.gather(*(_kids(flow) for _ in range(BURST)))
    assert jwks.builds == 2
