"""Steps the launch tests share: register a sandbox tenant with the service, issue links."""

from __future__ import annotations

import datetime as dt
from typing import Any

import aiohttp

from syncsvc.db.models import Tenant
from syncsvc.keys import SESSIONMAKER
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.tenants import TenantSpec, register_tenant
from tests.integration.connected import SANDBOX_SECRET
from tests.integration.web.conftest import PKJWT_CLIENT, PKJWT_KEY_ID, RunningService


async def register(
    service: RunningService,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    sandbox_tenant: str,
    *,
    name: str,
    auth: str = "public",
    private_key: str | None = None,
    resource_types: tuple[str, ...] = ("Patient", "Observation", "Condition"),
) -> Tenant:
    """Register a sandbox tenant with the running service, as ``tenants add`` would."""
    config = sandbox.tenant(sandbox_tenant)
    client_id = {
        "public": "syncsvc-public",
        "client_secret_basic": "syncsvc-confidential",
        "private_key_jwt": PKJWT_CLIENT,
    }[auth]
    spec = TenantSpec(
        name=name,
        display_name=config.name,
        vendor=config.vendor,
        fhir_base=sandbox.urls(sandbox_tenant).fhir_base,
        client_id=client_id,
        auth_method=auth,
        client_secret=SANDBOX_SECRET if auth == "client_secret_basic" else None,
        private_key_pem=private_key,
        key_id=PKJWT_KEY_ID if private_key else None,
        redirect_uri=service.callback,
        resource_types=resource_types,
    )
    return await register_tenant(
        service.app[SESSIONMAKER], service.vault, http, spec, now=dt.datetime.now(dt.UTC)
    )


async def new_link(
    api: aiohttp.ClientSession, user_id: str = "user-1", tenant: str | None = None, **extra: Any
) -> str:
    """A connect link URL issued through the host-app API."""
    body: dict[str, Any] = {"user_id": user_id, **extra}
    if tenant is not None:
        body["tenant"] = tenant
    async with api.post("/api/v1/connect-links", json=body) as response:
        assert response.status == 201, await response.text()
        payload = await response.json()
    url: str = payload["url"]
    return url
