"""SSRF through discovery: a remote tenant's endpoints are https on public addresses only.

A hostile tenant's discovery may name loopback, private, link-local or metadata addresses as its
token, JWKS or revocation endpoints, or its host name may resolve to one. No test here sends a
packet off this machine: the "DNS" is a resolver at the HTTP boundary that maps test names to
addresses, and every refusal is shown to happen before a connection is opened by pointing the
refused name at a real loopback listener that counts the connections it accepts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db import connection_claims, repo
from syncsvc.directory.tenants import TenantSpec, fresh_configuration, register_tenant
from syncsvc.errors import ConfigError, DiscoveryError
from syncsvc.http import create_http_client, create_webhook_client
from syncsvc.netguard import NonPublicAddress
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.settings import Settings
from syncsvc.smart.discovery import parse_smart_configuration
from syncsvc.sync.context import SyncContext
from syncsvc.sync.refresh import refresh_connection
from syncsvc.vault import Vault
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.connected import register_and_connect

Sessionmaker = async_sessionmaker[AsyncSession]
REFUSED_ADDRESSES = (
    "127.0.0.1",
    "::1",
    "10.0.0.7",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.100.100.200",  # Alibaba metadata (shared address space)
    "fd00:ec2::254",  # AWS metadata over IPv6 (unique-local)
    "fe80::1",
    "::ffff:10.0.0.1",
    "0.0.0.0",  # noqa: S104 - an address refused, never bound
)


@dataclass
class MapResolver(AbstractResolver):
    """Test DNS: each name answers the address it is mapped to; every question is recorded."""

    answers: dict[str, str]
    asked: list[str] = field(default_factory=list)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        address = self.answers[host]
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        return None


@dataclass
class Listener:
    """A loopback TCP listener that counts connections (and answers nothing)."""

    port: int = 0
    accepted: int = 0


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    state = Listener()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.accepted += 1
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


def _spec(base: str, name: str = "remote") -> TenantSpec:
    return TenantSpec(
        name=name, fhir_base=base, client_id="c", redirect_uri="https://sync.example/callback/x"
    )


async def test_names_resolving_to_private_addresses_are_refused_before_connecting(
    sessionmaker: Sessionmaker, vault: Vault, listener: Listener
) -> None:
    names = {f"ehr-{i}.example": address for i, address in enumerate(REFUSED_ADDRESSES)}
    # The loopback one points at a real listener: were the guard to let it through, the
    # listener would count the connection.
    names["ehr-0.example"] = "127.0.0.1"
    dns = MapResolver(names)
    async with create_http_client(resolver=dns, total_seconds=10) as http:
        for name in names:
            base = f"https://{name}:{listener.port}/fhir"
            with pytest.raises(DiscoveryError) as caught:
                await register_tenant(
                    sessionmaker,
                    vault,
                    http,
                    # Tenant names are slugs: the host name's dots become hyphens.
                    _spec(base, name.replace(".", "-")),
                    now=dt.datetime.now(dt.UTC),
                )
            cause = caught.value.__cause__
            assert isinstance(cause, aiohttp.ClientConnectorError), cause
            assert isinstance(cause.os_error, NonPublicAddress), cause.os_error
        assert sorted(set(dns.asked)) == sorted(names)
        assert listener.accepted == 0
        async with sessionmaker() as session:
            assert await repo.list_tenants(session) == []

        # The control: the webhook client may use private names, and then the same name
        # connects, so the listener above would have seen a connection that slipped through.
        async with create_webhook_client(resolver=dns) as hooks:
            with pytest.raises(aiohttp.ClientError):
                async with hooks.get(f"http://ehr-0.example:{listener.port}/"):
                    pass
        assert listener.accepted >= 1  # (aiohttp retries an idempotent request once)
        # ... and that answer is not cached for the next request that is not a webhook's.
        accepted = listener.accepted
        with pytest.raises(aiohttp.ClientConnectorError) as refused:
            async with http.get(f"http://ehr-0.example:{listener.port}/"):
                pass
        assert isinstance(refused.value.os_error, NonPublicAddress)
        assert listener.accepted == accepted


@pytest.mark.parametrize(
    "base",
    [
        "https://169.254.169.254/fhir",
        "https://10.0.0.1/fhir",
        "https://[fd00::1]/fhir",
        "https://[::ffff:192.168.0.1]/fhir",
        "http://ehr.example/fhir",
        "https://api.localhost/fhir",
        "https://[2002:7f00:1::]/fhir",  # 6to4 of 127.0.0.1
        "https://[::7f00:1]/fhir",  # IPv4-compatible 127.0.0.1
        "https://[64:ff9b:1::a00:1]/fhir",  # local-use NAT64
        "https://[fec0::1]/fhir",  # site-local
    ],
)
async def test_a_base_on_a_literal_private_address_or_plain_http_is_refused_unasked(
    sessionmaker: Sessionmaker, vault: Vault, base: str
) -> None:
    dns = MapResolver({})
    async with create_http_client(resolver=dns, total_seconds=10) as http:
        with pytest.raises(ConfigError):
            await register_tenant(
                sessionmaker, vault, http, _spec(base), now=dt.datetime.now(dt.UTC)
            )
    assert dns.asked == []


HOSTILE_ENDPOINTS = (
    "http://127.0.0.1:{port}/token",
    "https://127.0.0.1:{port}/token",
    "https://localhost:{port}/token",
    "https://169.254.169.254/latest/meta-data/",
    "https://[::1]:{port}/token",
    "https://10.1.2.3/token",
    "http://ehr.example/token",
)


@pytest.mark.parametrize("endpoint", HOSTILE_ENDPOINTS)
@pytest.mark.parametrize(
    "field_name", ["token_endpoint", "jwks_uri", "revocation_endpoint", "authorization_endpoint"]
)
def test_a_remote_tenants_discovery_naming_a_private_endpoint_is_refused(
    endpoint: str, field_name: str
) -> None:
    doc = {
        "issuer": "https://ehr.example/auth",
        "authorization_endpoint": "https://ehr.example/authorize",
        "token_endpoint": "https://ehr.example/token",
        "jwks_uri": "https://ehr.example/jwks",
        "revocation_endpoint": "https://ehr.example/revoke",
        field_name: endpoint.format(port=8765),
    }
    with pytest.raises(DiscoveryError):
        parse_smart_configuration("https://ehr.example/fhir", doc)
    # A loopback tenant (the sandbox) may keep plain http on loopback.
    local = {**doc, field_name: "http://127.0.0.1:8765/x"}
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri", "revocation_endpoint"):
        local[name] = "http://127.0.0.1:8765/x"
    local["issuer"] = "http://127.0.0.1:8765/auth"
    parse_smart_configuration("http://127.0.0.1:8765/fhir", local)


async def test_a_stored_document_naming_loopback_endpoints_is_not_used(
    sessionmaker: Sessionmaker,
    vault: Vault,
    sandbox: RunningSandbox,
    listener: Listener,
) -> None:
    """A remote tenant discovered before the rules tightened, its endpoints on this machine.

    Its host name resolves to this machine, at the port of a listener that counts connections:
    were the re-discovery to connect despite the address check, the listener would count it.
    """
    dns = MapResolver({"ehr.example": "127.0.0.1"})
    remote_base = f"https://ehr.example:{listener.port}/fhir"
    urls = sandbox.urls(GENERIC_TENANT)
    now = dt.datetime.now(dt.UTC)
    endpoints = parse_smart_configuration(
        remote_base,
        {
            "authorization_endpoint": f"https://ehr.example:{listener.port}/authorize",
            "token_endpoint": f"https://ehr.example:{listener.port}/token",
        },
    ).to_json()
    endpoints["token_endpoint"] = urls.token  # what the hostile document said then
    async with sessionmaker.begin() as session:
        tenant = await repo.create_tenant(
            session,
            id="t-remote",
            name="remote",
            now=now,
            display_name="Remote",
            vendor="generic",
            fhir_base=remote_base,
            client_id="c",
            auth_method="public",
            redirect_uri="https://sync.example/callback/remote",
            configured_scopes=["Patient"],
            endpoints=endpoints,
            discovery_fetched_at=now,
        )
    seen = len(sandbox.state.request_log)
    async with create_http_client(resolver=dns, total_seconds=10) as http:
        with pytest.raises(DiscoveryError):
            await fresh_configuration(sessionmaker, http, tenant, now=now)
    assert dns.asked == ["ehr.example"]  # re-discovery was tried, and refused unconnected
    assert len(sandbox.state.request_log) == seen
    assert listener.accepted == 0


async def test_a_stored_token_endpoint_on_loopback_never_gets_the_refresh_token(
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
) -> None:
    """A connection of a remote tenant whose grant came from a token endpoint on this machine."""
    _, connection = await register_and_connect(sessionmaker, vault, http, sandbox, GENERIC_TENANT)
    async with sessionmaker.begin() as session:
        row = await repo.get_connection(session, connection.id)
        assert row is not None
        row.fhir_base = "https://ehr.example/fhir"  # remote; token_endpoint stays the sandbox's
    token_url = sandbox.urls(GENERIC_TENANT).token
    before = [e for e in sandbox.state.request_log if e.url.startswith(token_url)]
    dns = MapResolver({"ehr.example": "10.20.30.40"})
    async with create_http_client(resolver=dns, total_seconds=10) as guarded:
        ctx = SyncContext(settings, sessionmaker, vault, guarded)
        async with sessionmaker.begin() as session:
            claimed = await connection_claims.claim_due_connections(
                session, ctx.owner, ctx.now(), settings.lease_seconds, 10
            )
        assert [c.id for c in claimed] == [connection.id]
        result = await asyncio.wait_for(refresh_connection(ctx, connection.id, force=True), 20)
    assert result.outcome == "needs_reauth"
    assert result.reason == "token_endpoint_refused"
    after = [e for e in sandbox.state.request_log if e.url.startswith(token_url)]
    assert after == before
