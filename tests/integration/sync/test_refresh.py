"""Token refresh of leased connections against the sandbox EHR, on SQLite and PostgreSQL.

Time moves through one test clock that drives both the sync context and the sandbox, so expiries,
throttling windows and keep-alive horizons are reached without sleeping. Token-endpoint faults
the sandbox has no switch for (429 without Retry-After, a reset, malformed or unusable bodies)
come from a small gateway in front of the sandbox's token endpoint, over real HTTP.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

import aiohttp
import orjson
import pytest
from aiohttp import web
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from structlog.testing import capture_logs

from syncsvc.db import connection_claims, repo
from syncsvc.db.models.activity import PendingRevocation
from syncsvc.db.models.connections import Connection
from syncsvc.db.models.records import Resource, SyncRun, SyncState
from syncsvc.errors import ReauthRequired, Transient
from syncsvc.lifecycle.disconnect import disconnect_connection
from syncsvc.lifecycle.revocations import retry_pending, token_purpose
from syncsvc.sandbox.config import FaultSpec
from syncsvc.sandbox.faults import reset_connection
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.settings import Settings
from syncsvc.smart.oauth import TokenResponse
from syncsvc.sync.context import SyncContext
from syncsvc.sync.credentials import StoredTokens, load_tokens, save_tokens
from syncsvc.sync.pull import pull_connection
from syncsvc.sync.refresh import refresh_connection, reschedule_refresh
from syncsvc.sync.refresh_outcomes import REFRESH_BACKOFF, RefreshResult
from syncsvc.sync.token_source import TokenSource
from syncsvc.vault import Vault
from syncsvc.vocabulary import OFFLINE_ACCESS_NOT_GRANTED
from tests.fixtures.sandbox import CERNER_TENANT, GENERIC_TENANT
from tests.integration.connected import connect_patient, register_sandbox_tenant
from tests.integration.sandbox.authflow import refresh as sandbox_refresh

NANCY = "12724066"
#: Bound on any single refresh in these tests; a hang is a failure, not a slow pass.
STEP_TIMEOUT = 30


class Clock:
    """Wall time plus an offset, moved together with the sandbox's clock unless told otherwise."""

    def __init__(self, sandbox: RunningSandbox) -> None:
        self.sandbox = sandbox
        self.offset = dt.timedelta()

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset

    def advance(self, seconds: float, *, sandbox: bool = True) -> None:
        self.offset += dt.timedelta(seconds=seconds)
        if sandbox:
            self.sandbox.state.clock_offset += seconds


Answer = tuple[int, dict[str, str], bytes] | str


@dataclass
class Gateway:
    """A token endpoint in front of the sandbox's, answering scripted faults before forwarding."""

    http: aiohttp.ClientSession
    url: str = ""
    upstream: str = ""
    #: Answers for the next requests, in order: (status, headers, body), or ``"reset"``.
    answers: list[Answer] = field(default_factory=list)
    #: Run once, while the next request is in flight (before it is answered).
    before: Callable[[], Awaitable[None]] | None = None
    #: Drop ``refresh_token`` from forwarded answers (an EHR that never repeats it).
    strip_refresh_token: bool = False
    hits: int = 0
    #: Where ``/revoke`` on the gateway forwards (revocation must stay on the token host).
    revoke_upstream: str = ""

    async def revoke(self, request: web.Request) -> web.StreamResponse:
        headers = {
            k: request.headers[k] for k in ("Authorization", "Content-Type") if k in request.headers
        }
        async with self.http.post(
            self.revoke_upstream, data=await request.read(), headers=headers
        ) as upstream:
            return web.Response(status=upstream.status, body=await upstream.read())

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if self.before is not None:
            hook, self.before = self.before, None
            await hook()
        if self.answers:
            answer = self.answers.pop(0)
            if isinstance(answer, str):  # "reset"
                reset_connection(request)
                return web.Response(status=599)
            status, headers, body = answer
            return web.Response(status=status, headers=headers, body=body)
        forwarded = {
            name: request.headers[name]
            for name in ("Authorization", "Content-Type", "Accept")
            if name in request.headers
        }
        async with self.http.post(
            self.upstream, data=await request.read(), headers=forwarded
        ) as upstream:
            body = await upstream.read()
            headers = {
                name: upstream.headers[name]
                for name in ("Content-Type", "Retry-After", "Cache-Control")
                if name in upstream.headers
            }
            status = upstream.status
        if self.strip_refresh_token and status == 200:
            doc = orjson.loads(body)
            doc.pop("refresh_token", None)
            body = orjson.dumps(doc)
        return web.Response(status=status, headers=headers, body=body)


@pytest.fixture(autouse=True)
def auto_approve(sandbox: RunningSandbox) -> None:
    """Every tenant approves Nancy without a login page."""
    for tenant in sandbox.state.config.tenants:
        tenant.policy.auto_approve_patient = NANCY


@pytest.fixture
def clock(sandbox: RunningSandbox) -> Clock:
    """The test clock shared by the sync context and the sandbox."""
    return Clock(sandbox)


@pytest.fixture
def ctx(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    vault: Vault,
    http: aiohttp.ClientSession,
    clock: Clock,
) -> SyncContext:
    """A sync context on this test's database, with the test clock."""
    return SyncContext(settings, sessionmaker, vault, http, clock=clock.now)


@pytest.fixture
async def gateway(http: aiohttp.ClientSession) -> AsyncIterator[Gateway]:
    """A scripted token endpoint on loopback that forwards to the sandbox by default."""
    gate = Gateway(http)
    app = web.Application()
    app.router.add_post("/token", gate.handle)
    app.router.add_post("/revoke", gate.revoke)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    gate.url = f"http://{host}:{port}/token"
    try:
        yield gate
    finally:
        await runner.cleanup()


# --- helpers ---------------------------------------------------------------------------------


async def connect(
    ctx: SyncContext,
    sandbox: RunningSandbox,
    sandbox_tenant: str,
    *,
    scopes: list[str] | None = None,
    leased: bool = True,
) -> str:
    """A live connection to Nancy at ``sandbox_tenant``, leased to ``ctx.owner`` if ``leased``."""
    tenant = await register_sandbox_tenant(
        ctx.sessionmaker, ctx.vault, ctx.http, sandbox, sandbox_tenant
    )
    connection = await connect_patient(
        ctx.sessionmaker,
        ctx.vault,
        ctx.http,
        sandbox,
        tenant,
        sandbox_tenant=sandbox_tenant,
        scopes=scopes,
    )
    if leased:
        await lease(ctx, connection.id)
    return connection.id


async def lease(ctx: SyncContext, connection_id: str) -> None:
    """Hold the connection's lease: renew ours, or claim it the way the scheduler does."""
    async with ctx.sessionmaker.begin() as session:
        renewed = await connection_claims.renew_lease(
            session,
            connection_id,
            ctx.owner,
            now=ctx.now(),
            lease_seconds=ctx.settings.lease_seconds,
        )
        if renewed:
            return
        claimed = await connection_claims.claim_due_connections(
            session,
            ctx.owner,
            ctx.now(),
            ctx.settings.lease_seconds,
            10,
            connection_ids=[connection_id],
        )
    assert [c.id for c in claimed] == [connection_id]


async def through_gateway(ctx: SyncContext, connection_id: str, gateway: Gateway) -> None:
    """Send this connection's token requests through ``gateway`` (to the same upstream)."""
    async with ctx.sessionmaker.begin() as session:
        connection = await repo.get_connection(session, connection_id)
        assert connection is not None
        gateway.upstream = connection.token_endpoint
        await session.execute(
            update(Connection)
            .where(Connection.id == connection_id)
            .values(token_endpoint=gateway.url)
        )


async def row(ctx: SyncContext, connection_id: str) -> Connection:
    async with ctx.sessionmaker() as session:
        connection = await repo.get_connection(session, connection_id)
    assert connection is not None
    return connection


async def stored(ctx: SyncContext, connection_id: str) -> StoredTokens:
    async with ctx.sessionmaker() as session:
        tokens = await load_tokens(session, ctx.vault, connection_id)
    assert tokens is not None
    return tokens


async def refresh(ctx: SyncContext, connection_id: str, *, force: bool = False) -> RefreshResult:
    return await asyncio.wait_for(refresh_connection(ctx, connection_id, force=force), STEP_TIMEOUT)


def token_requests(sandbox: RunningSandbox, since: int = 0) -> int:
    """How many token-endpoint requests the sandbox logged from index ``since``."""
    log = list(sandbox.state.request_log)[since:]
    return sum(1 for entry in log if entry.method == "POST" and entry.url.endswith("/token"))


def log_size(sandbox: RunningSandbox) -> int:
    return len(sandbox.state.request_log)


async def fhir_status(
    http: aiohttp.ClientSession, sandbox: RunningSandbox, sandbox_tenant: str, access_token: str
) -> int:
    """The status of reading Nancy's Patient resource with ``access_token``."""
    url = f"{sandbox.urls(sandbox_tenant).fhir_base}/Patient/{NANCY}"
    headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/fhir+json"}
    async with http.get(url, headers=headers) as response:
        await response.read()
        return response.status


def seconds(delta: dt.timedelta) -> float:
    return delta.total_seconds()


# --- refreshing --------------------------------------------------------------------------------


async def test_cerner_refresh_keeps_the_refresh_token_and_schedules_570_s_tokens_for_syncs_only(
    ctx: SyncContext, sandbox: RunningSandbox, clock: Clock
) -> None:
    cid = await connect(ctx, sandbox, CERNER_TENANT, leased=False)
    before = await stored(ctx, cid)
    connected = await row(ctx, cid)
    clock.advance(451)
    await lease(ctx, cid)

    result = await refresh(ctx, cid)

    after = await stored(ctx, cid)
    connection = await row(ctx, cid)
    assert result.outcome == "refreshed"
    assert result.tokens == after
    assert after.version == before.version + 1
    assert after.refresh_token == before.refresh_token
    assert after.access_token != before.access_token
    assert connection.last_refresh_at is not None
    assert after.access_expires_at is not None
    assert seconds(after.access_expires_at - connection.last_refresh_at) == pytest.approx(
        570, abs=2
    )
    # The overdue sync this refresh was for has its token: no other refresh is needed before
    # the keepalive, however soon this 570 s token expires.
    assert connection.next_refresh_at == connection.last_refresh_at + dt.timedelta(days=30)
    assert connection.failure_count == 0
    assert connection.backoff_until is None
    assert connection.granted_scopes == connected.granted_scopes
    assert connection.status == "active"

    # Straight after, nothing is due and the EHR is not asked.
    mark = log_size(sandbox)
    again = await refresh(ctx, cid)
    assert again.outcome == "not_due"
    assert again.tokens == after
    assert token_requests(sandbox, mark) == 0

    # Once the next sync is set, the refresh it needs falls due with it, not ahead of expiry.
    next_sync = clock.now() + dt.timedelta(hours=6)
    async with ctx.sessionmaker.begin() as session:
        scheduled = await repo.get_connection(session, cid)
        assert scheduled is not None
        scheduled.next_sync_at = next_sync
        await reschedule_refresh(session, ctx, scheduled, now=clock.now())
    assert (await row(ctx, cid)).next_refresh_at == next_sync
    clock.advance(6 * 3600)
    await lease(ctx, cid)  # claimable: due
    assert (await refresh(ctx, cid)).outcome == "refreshed"
    assert token_requests(sandbox, mark) == 1


async def test_an_answer_without_refresh_token_keeps_the_stored_one(
    ctx: SyncContext, sandbox: RunningSandbox, gateway: Gateway
) -> None:
    cid = await connect(ctx, sandbox, GENERIC_TENANT)
    await through_gateway(ctx, cid, gateway)
    gateway.strip_refresh_token = True
    before = await stored(ctx, cid)

    result = await refresh(ctx, cid, force=True)

    after = await stored(ctx, cid)
    assert result.outcome == "refreshed"
    assert gateway.hits == 1
    assert after.refresh_token == before.refresh_token
    assert after.access_token != before.access_token


async def test_rolling_rotation_stores_the_new_refresh_token(
    ctx: SyncContext, sandbox: RunningSandbox, clock: Clock
) -> None:
    sandbox.tenant(GENERIC_TENANT).policy.refresh_mode = "rolling"
    cid = await connect(ctx, sandbox, GENERIC_TENANT)
    before = await stored(ctx, cid)

    result = await refresh(ctx, cid, force=True)

    after = await stored(ctx, cid)
    grant = next(iter(sandbox.state.grants.values()))
    assert result.outcome == "refreshed"
    assert after.refresh_token != before.refresh_token
    assert after.refresh_token == grant.refresh_token
    # The stored token is the one that works next time.
    clock.advance(61)
    await lease(ctx, cid)
    assert (await refresh(ctx, cid, force=True)).outcome == "refreshed"
    assert not grant.revoked


async def test_strict_rotation_commits_the_new_token_before_handing_it_out(
    ctx: SyncContext, sandbox: RunningSandbox, http: aiohttp.ClientSession, clock: Clock
) -> None:
    sandbox.tenant(GENERIC_TENANT).policy.refresh_mode = "strict_rotation"
    cid = await connect(ctx, sandbox, GENERIC_TENANT)
    first = await stored(ctx, cid)
    grant = next(iter(sandbox.state.grants.values()))

    # Asking for more life than the token has forces a refresh.
    handed_out = await asyncio.wait_for(
        TokenSource(ctx, cid, margin_seconds=7200).tokens(), STEP_TIMEOUT
    )

    # Committed by the time it was handed out: another session reads exactly these tokens.
    committed = await stored(ctx, cid)
    assert committed == handed_out
    assert committed.version == first.version + 1
    assert committed.refresh_token == grant.refresh_token != first.refresh_token
    assert await fhir_status(http, sandbox, GENERIC_TENANT, committed.access_token or "") == 200

    # A second rotation from what is stored works: the stored token was the live one.
    clock.advance(61)
    await lease(ctx, cid)
    second = await refresh(ctx, cid, force=True)
    assert second.outcome == "refreshed"
    assert not grant.revoked
    assert (await stored(ctx, cid)).refresh_token == grant.refresh_token

    # The sandbox refuses the first refresh token afterwards (as a reuse).
    status, body, _ = await sandbox_refresh(
        http, sandbox, GENERIC_TENANT, first.refresh_token or ""
    )
    assert status == 400
    assert body["error"] == "invalid_grant"


async def test_refreshes_are_at_least_a_minute_apart(
    ctx: SyncContext, sandbox: RunningSandbox, clock: Clock
) -> None:
    sandbox.tenant(CERNER_TENANT).policy.access_token_lifetime = 90
    cid = await connect(ctx, sandbox, CERNER_TENANT)
    assert (await refresh(ctx, cid, force=True)).outcome == "refreshed"
    connection = await row(ctx, cid)
    assert connection.last_refresh_at is not None
    # A 90-second token would be due 30 s ago by the margin alone; the minute wins.
    assert connection.next_refresh_at == connection.last_refresh_at + dt.timedelta(seconds=60)

    mark = log_size(sandbox)
    scheduled = await refresh(ctx, cid)
    forced = await refresh(ctx, cid, force=True)

    assert scheduled.outcome == forced.outcome == "not_due"
    assert token_requests(sandbox, mark) == 0
    clock.advance(61)
    await lease(ctx, cid)
    assert (await refresh(ctx, cid)).outcome == "refreshed"
    assert token_requests(sandbox, mark) == 1


async def test_idle_grants_are_refreshed_every_keepalive_period(
    ctx: SyncContext, sandbox: RunningSandbox, clock: Clock
) -> None:
    sandbox.tenant(CERNER_TENANT).policy.access_token_lifetime = 60 * 86_400
    cid = await connect(ctx, sandbox, CERNER_TENANT)
    before = await stored(ctx, cid)
    connected_at = (await row(ctx, cid)).connected_at
    assert connected_at is not None

    assert (await refresh(ctx, cid)).outcome == "not_due"
    horizon = (await row(ctx, cid)).next_refresh_at
    assert horizon == connected_at + dt.timedelta(days=30)

    clock.advance(30 * 86_400 + 1)
    await lease(ctx, cid)
    assert before.access_valid(clock.now(), 29 * 86_400)
    result = await refresh(ctx, cid)

    connection = await row(ctx, cid)
    assert result.outcome == "refreshed"
    assert connection.last_refresh_at is not None
    assert connection.next_refresh_at == connection.last_refresh_at + dt.timedelta(days=30)


async def test_a_narrowed_scope_is_recorded(ctx: SyncContext, sandbox: RunningSandbox) -> None:
    cid = await connect(ctx, sandbox, GENERIC_TENANT)
    granted = (await row(ctx, cid)).granted_scopes
    observation = next(s for s in granted if "Observation" in s)
    sandbox.tenant(GENERIC_TENANT).policy.missing_scopes = [observation]

    result = await refresh(ctx, cid, force=True)

    assert result.outcome == "refreshed"
    assert (await row(ctx, cid)).granted_scopes == [s for s in granted if s != observation]


# --- grants that are gone ----------------------------------------------------------------------


async def test_a_revoked_grant_needs_reauth_with_the_ehr_error_uri(
    ctx: SyncContext, sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    cid = await connect(ctx, sandbox, CERNER_TENANT)
    before = await stored(ctx, cid)
    async with http.post(
        f"{sandbox.origin}/admin/grants/revoke", json={"tenant": CERNER_TENANT, "patient": NANCY}
    ) as response:
        assert response.status == 200

    result = await refresh(ctx, cid, force=True)

    connection = await row(ctx, cid)
    assert result.outcome == "needs_reauth"
    assert result.reason is not None
    assert result.reason.replace("-", "_") == "invalid_grant"
    assert result.error_uri is not None
    assert result.error_uri.startswith(sandbox.origin)
    assert "invalid-grant" in unquote(result.error_uri)
    assert connection.status == "needs_reauth"
    assert connection.status_reason == result.reason
    assert connection.error_uri == result.error_uri
    assert connection.status_message == result.message
    assert result.message is not None
    assert "connect again" in result.message
    assert connection.next_refresh_at is None
    # Tokens are kept (never deleted on an error), and retrying has stopped.
    assert await stored(ctx, cid) == before
    mark = log_size(sandbox)
    assert (await refresh(ctx, cid, force=True)).outcome == "needs_reauth"
    with pytest.raises(ReauthRequired) as raised:
        await TokenSource(ctx, cid, margin_seconds=3600).tokens()
    assert raised.value.error_uri == result.error_uri
    assert token_requests(sandbox, mark) == 0


async def test_without_offline_access_the_ehr_is_never_asked(
    ctx: SyncContext, sandbox: RunningSandbox, clock: Clock
) -> None:
    mark = log_size(sandbox)
    scopes = ["launch/patient", "openid", "fhirUser", "patient/Patient.read"]
    cid = await connect(ctx, sandbox, GENERIC_TENANT, scopes=scopes)
    tokens = await stored(ctx, cid)
    assert tokens.refresh_token is None
    assert token_requests(sandbox, mark) == 1  # the code exchange of the launch

    early = await refresh(ctx, cid, force=True)
    assert early.outcome == "not_due"
    assert (await row(ctx, cid)).next_refresh_at == tokens.access_expires_at
    assert await TokenSource(ctx, cid).tokens() == tokens

    assert tokens.access_expires_at is not None
    clock.advance(seconds(tokens.access_expires_at - clock.now()) + 1)
    await lease(ctx, cid)
    late = await refresh(ctx, cid)

    connection = await row(ctx, cid)
    assert late.outcome == "needs_reauth"
    assert late.reason == OFFLINE_ACCESS_NOT_GRANTED
    assert connection.status == "needs_reauth"
    assert connection.status_reason == OFFLINE_ACCESS_NOT_GRANTED
    assert connection.next_refresh_at is None
    with pytest.raises(ReauthRequired):
        await TokenSource(ctx, cid).tokens()
    assert token_requests(sandbox, mark) == 1


# --- transient failures ------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One way a token request fails transiently, and the Retry-After it carries."""

    sandbox: tuple[FaultSpec, ...] = ()
    gateway: tuple[Answer, ...] = ()
    retry_after: float | None = None


HTML = {"Content-Type": "text/html"}
JSON = {"Content-Type": "application/json"}
FAULTS = {
    "503 with Retry-After": Fault(
        sandbox=(FaultSpec(kind="token_outage", target="token", count=1, retry_after=7),),
        retry_after=7,
    ),
    "400 HTML (Epic merged endpoint)": Fault(
        sandbox=(FaultSpec(kind="epic_merged_400_html", target="token", count=1),)
    ),
    "429 with Retry-After": Fault(
        gateway=((429, {**JSON, "Retry-After": "30"}, b'{"error":"slow_down"}'),),
        retry_after=30,
    ),
    "429 without Retry-After": Fault(gateway=((429, HTML, b"<h1>Too Many Requests</h1>"),)),
    "500": Fault(gateway=((500, HTML, b"<h1>Internal Server Error</h1>"),)),
    "reset": Fault(gateway=("reset",)),
    "malformed JSON": Fault(gateway=((200, JSON, b'{"access_token": "abc", "token_ty'),)),
    "no access_token": Fault(gateway=((200, JSON, b'{"token_type":"Bearer","expires_in":570}'),)),
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
async def test_transient_failures_back_off_and_keep_the_old_tokens(
    ctx: SyncContext,
    sandbox: RunningSandbox,
    http: aiohttp.ClientSession,
    clock: Clock,
    gateway: Gateway,
    fault: Fault,
) -> None:
    cid = await connect(ctx, sandbox, CERNER_TENANT)
    await through_gateway(ctx, cid, gateway)
    before = await stored(ctx, cid)
    sandbox.tenant(CERNER_TENANT).faults[:] = list(fault.sandbox)
    gateway.answers = list(fault.gateway)
    started = clock.now()

    result = await refresh(ctx, cid, force=True)

    connection = await row(ctx, cid)
    assert result.outcome == "transient"
    assert result.tokens == before
    assert await stored(ctx, cid) == before
    assert connection.status == "active"
    assert connection.failure_count == 1
    assert result.retry_at is not None
    assert connection.backoff_until == connection.next_refresh_at == result.retry_at
    wait = seconds(result.retry_at - started)
    assert wait >= (fault.retry_after or REFRESH_BACKOFF.floor_seconds)
    assert wait <= max(fault.retry_after or 0, REFRESH_BACKOFF.bound(1)) + STEP_TIMEOUT
    # The old access token still works meanwhile.
    assert await fhir_status(http, sandbox, CERNER_TENANT, before.access_token or "") == 200

    # Until the backoff ends, even a forced refresh does not ask the EHR.
    hits = gateway.hits
    waiting = await refresh(ctx, cid, force=True)
    assert waiting.outcome == "transient"
    assert waiting.retry_at == result.retry_at
    assert gateway.hits == hits

    # Afterwards the kept refresh token works.
    clock.advance(seconds(result.retry_at - clock.now()) + 1)
    await lease(ctx, cid)
    recovered = await refresh(ctx, cid, force=True)
    connection = await row(ctx, cid)
    assert recovered.outcome == "refreshed"
    assert recovered.tokens is not None
    assert recovered.tokens.refresh_token == before.refresh_token
    assert connection.failure_count == 0
    assert connection.backoff_until is None


async def test_cerner_throttling_is_transient_and_honours_retry_after(
    ctx: SyncContext, sandbox: RunningSandbox, clock: Clock
) -> None:
    cid = await connect(ctx, sandbox, CERNER_TENANT)
    assert (await refresh(ctx, cid, force=True)).outcome == "refreshed"
    before = await stored(ctx, cid)
    # Our minute has passed but the EHR's has not (clocks disagree): it answers 429.
    clock.advance(61, sandbox=False)
    started = clock.now()

    result = await refresh(ctx, cid, force=True)

    assert result.outcome == "transient"
    assert result.retry_at is not None
    assert seconds(result.retry_at - started) >= 59
    assert await stored(ctx, cid) == before
    clock.advance(seconds(result.retry_at - clock.now()) + 1)
    await lease(ctx, cid)
    assert (await refresh(ctx, cid, force=True)).outcome == "refreshed"


# --- leases and concurrent writers -------------------------------------------------------------


async def test_without_the_lease_the_ehr_is_not_called(
    ctx: SyncContext, sandbox: RunningSandbox, clock: Clock
) -> None:
    cid = await connect(ctx, sandbox, CERNER_TENANT, leased=False)
    before = await stored(ctx, cid)
    mark = log_size(sandbox)

    never_leased = await refresh(ctx, cid, force=True)
    async with ctx.sessionmaker.begin() as session:
        taken = await connection_claims.claim_due_connections(
            session, "another-worker", ctx.now(), 120, 10
        )
    assert [c.id for c in taken] == [cid]
    leased_elsewhere = await refresh(ctx, cid, force=True)
    clock.advance(121)
    expired = await refresh(ctx, cid, force=True)

    assert never_leased.outcome == leased_elsewhere.outcome == expired.outcome == "lost_lease"
    assert never_leased.tokens is None
    assert token_requests(sandbox, mark) == 0
    assert await stored(ctx, cid) == before
    with pytest.raises(Transient) as raised:
        await TokenSource(ctx, cid, margin_seconds=3600).tokens()
    assert raised.value.reason == "lost_lease"


async def _competing_write(ctx: SyncContext, connection_id: str, access_token: str) -> None:
    """Another writer stores tokens (what a worker that took over the lease would do)."""
    async with ctx.sessionmaker.begin() as session:
        current = await load_tokens(session, ctx.vault, connection_id)
        response = TokenResponse(
            access_token=access_token,
            expires_at=(ctx.now() + dt.timedelta(hours=1)).timestamp(),
            scopes=(),
            scope_returned=False,
        )
        await save_tokens(
            session, ctx.vault, connection_id, response, previous=current, now=ctx.now()
        )


async def test_a_concurrent_writer_wins_and_its_tokens_are_returned(
    ctx: SyncContext, sandbox: RunningSandbox, gateway: Gateway
) -> None:
    cid = await connect(ctx, sandbox, GENERIC_TENANT)
    await through_gateway(ctx, cid, gateway)
    before = await stored(ctx, cid)
    # Written while our token request is in flight: on SQLite this would wait for, and time
    # out on, any transaction the refresh held open across the call.
    gateway.before = lambda: _competing_write(ctx, cid, "their-access-token")

    result = await refresh(ctx, cid, force=True)

    after = await stored(ctx, cid)
    assert result.outcome == "refreshed"
    assert result.tokens == after
    assert after.access_token == "their-access-token"
    assert after.refresh_token == before.refresh_token
    assert after.version == before.version + 1
    assert gateway.hits == 1


async def test_invalid_grant_after_a_concurrent_rotation_is_not_the_patients_problem(
    ctx: SyncContext, sandbox: RunningSandbox, gateway: Gateway
) -> None:
    cid = await connect(ctx, sandbox, GENERIC_TENANT)
    await through_gateway(ctx, cid, gateway)
    gateway.before = lambda: _competing_write(ctx, cid, "their-access-token")
    gateway.answers = [(400, JSON, b'{"error":"invalid_grant"}')]

    result = await refresh(ctx, cid, force=True)

    assert result.outcome == "refreshed"
    assert result.tokens is not None
    assert result.tokens.access_token == "their-access-token"
    assert (await row(ctx, cid)).status == "active"


# --- the pull engine's view --------------------------------------------------------------------


async def test_token_source_refreshes_a_570_s_token_mid_pull(
    ctx: SyncContext, sandbox: RunningSandbox, http: aiohttp.ClientSession, clock: Clock
) -> None:
    cid = await connect(ctx, sandbox, CERNER_TENANT)
    before = await stored(ctx, cid)
    mark = log_size(sandbox)

    fresh = await TokenSource(ctx, cid, margin_seconds=60).tokens()
    assert fresh == before
    assert token_requests(sandbox, mark) == 0

    clock.advance(500)
    await lease(ctx, cid)
    renewed = await TokenSource(ctx, cid, margin_seconds=120).tokens()

    assert renewed.access_token != before.access_token
    assert renewed == await stored(ctx, cid)
    assert renewed.access_valid(clock.now(), 500)
    assert token_requests(sandbox, mark) == 1
    assert await fhir_status(http, sandbox, CERNER_TENANT, renewed.access_token or "") == 200

    # After a 401 the pull forces a refresh of a token that still looks valid.
    clock.advance(61)
    await lease(ctx, cid)
    forced = await TokenSource(ctx, cid).tokens(force=True)
    assert forced.access_token != renewed.access_token
    assert forced == await stored(ctx, cid)
    assert token_requests(sandbox, mark) == 2


async def test_token_source_raises_transient_with_retry_after(
    ctx: SyncContext, sandbox: RunningSandbox, clock: Clock, gateway: Gateway
) -> None:
    cid = await connect(ctx, sandbox, CERNER_TENANT)
    await through_gateway(ctx, cid, gateway)
    gateway.answers = [(503, {**HTML, "Retry-After": "45"}, b"<h1>Unavailable</h1>")]

    with pytest.raises(Transient) as raised:
        await TokenSource(ctx, cid, margin_seconds=3600).tokens()

    assert raised.value.retry_after is not None
    assert raised.value.retry_after >= 44


# --- secrecy -----------------------------------------------------------------------------------


async def test_no_token_appears_in_results_or_logs(
    ctx: SyncContext,
    sandbox: RunningSandbox,
    http: aiohttp.ClientSession,
    clock: Clock,
    gateway: Gateway,
) -> None:
    cid = await connect(ctx, sandbox, CERNER_TENANT)
    await through_gateway(ctx, cid, gateway)
    secrets: set[str] = set()

    def remember(tokens: StoredTokens | None) -> None:
        if tokens is not None:
            secrets.update(t for t in (tokens.access_token, tokens.refresh_token) if t)

    remember(await stored(ctx, cid))
    results: list[RefreshResult] = []
    with capture_logs() as logs:
        results.append(await refresh(ctx, cid, force=True))
        remember(await stored(ctx, cid))
        results.append(await refresh(ctx, cid))
        clock.advance(61)
        gateway.answers = [(500, HTML, b"<h1>down</h1>")]
        results.append(await refresh(ctx, cid, force=True))
        async with http.post(
            f"{sandbox.origin}/admin/grants/revoke", json={"tenant": CERNER_TENANT}
        ) as response:
            assert response.status == 200
        retry_at = results[-1].retry_at
        assert retry_at is not None
        clock.advance(seconds(retry_at - clock.now()) + 1)
        await lease(ctx, cid)
        results.append(await refresh(ctx, cid, force=True))

    assert [r.outcome for r in results] == ["refreshed", "not_due", "transient", "needs_reauth"]
    assert len(secrets) >= 3
    refresh_lines = [line for line in logs if line.get("event") == "refresh"]
    assert len(refresh_lines) == len(results)
    assert all(line["connection_id"] == cid for line in refresh_lines)
    assert [line["outcome"] for line in refresh_lines] == [r.outcome for r in results]
    shown = repr(results) + repr(logs) + "".join(str(r.message) for r in results)
    for secret in secrets:
        assert secret not in shown


async def test_a_disconnect_during_the_refresh_queues_the_new_token_for_revocation(
    ctx: SyncContext, sandbox: RunningSandbox, gateway: Gateway
) -> None:
    tenant = sandbox.tenant(GENERIC_TENANT)
    tenant.policy.refresh_mode = "rolling"
    cid = await connect(ctx, sandbox, GENERIC_TENANT)
    await through_gateway(ctx, cid, gateway)
    # Revocation goes through the gateway too: it must be on the host the token came from.
    gateway.revoke_upstream = sandbox.urls(GENERIC_TENANT).revoke
    async with ctx.sessionmaker.begin() as session:
        connection = await repo.get_connection(session, cid)
        assert connection is not None
        registered = await repo.get_tenant(session, connection.tenant_id)
        assert registered is not None
        registered.endpoints = {
            **registered.endpoints,
            "revocation_endpoint": gateway.url.replace("/token", "/revoke"),
        }
    grant = next(iter(sandbox.state.grants.values()))
    # The EHR's revocation endpoint is down, so the disconnect's own revocation is only queued
    # and the refresh in flight goes through.
    outage = FaultSpec(kind="token_outage", target="revoke")
    tenant.faults.append(outage)

    async def patient_disconnects() -> None:
        # While the EHR is answering: the credentials row is deleted, its token queued.
        await disconnect_connection(ctx, cid, by="patient", erase=True)

    gateway.before = patient_disconnects
    result = await refresh(ctx, cid, force=True)

    assert result.outcome == "needs_reauth"
    assert result.reason == "disconnected"
    assert result.tokens is None
    async with ctx.sessionmaker() as session:
        assert await load_tokens(session, ctx.vault, cid) is None
        pending = list(await session.scalars(select(PendingRevocation)))
    # Both are queued: the disconnect's token, and the one the EHR issued during it (live now).
    queued = {
        ctx.vault.decrypt(p.token_enc, purpose=token_purpose(p.token_type_hint), row=p.id)
        for p in pending
        if p.connection_id == cid
    }
    assert grant.refresh_token is not None
    assert grant.refresh_token in queued
    assert len(queued) == 2
    assert not grant.revoked
    tenant.faults.remove(outage)
    report = await retry_pending(ctx)
    assert report.revoked >= 1
    assert grant.revoked


async def test_a_held_lease_is_checked_by_reading_and_renewed_only_when_short(
    ctx: SyncContext, sandbox: RunningSandbox, clock: Clock
) -> None:
    cid = await connect(ctx, sandbox, CERNER_TENANT)

    async def lease_until() -> dt.datetime | None:
        async with ctx.sessionmaker() as session:
            return await session.scalar(select(Connection.lease_until).where(Connection.id == cid))

    claimed_until = await lease_until()
    assert claimed_until is not None
    clock.advance(10)
    fresh = await refresh(ctx, cid, force=True)
    # Most of the lease was left: the refresh read it and did not write it.
    assert fresh.outcome == "refreshed"
    assert await lease_until() == claimed_until
    # Less than half left (the runner's renewals fell behind): renewed before the EHR is called.
    clock.advance(ctx.settings.lease_seconds * 0.6)
    lease = dt.timedelta(seconds=ctx.settings.lease_seconds)
    before = clock.now()
    short = await refresh(ctx, cid, force=True)
    after = clock.now()
    assert short.outcome == "refreshed"
    renewed_until = await lease_until()
    assert renewed_until is not None
    assert before + lease <= renewed_until <= after + lease


async def test_a_pull_after_a_refresh_starts_from_its_read_and_a_disconnect_meanwhile_stops_it(
    ctx: SyncContext, sandbox: RunningSandbox
) -> None:
    cid = await connect(ctx, sandbox, CERNER_TENANT)
    result = await refresh(ctx, cid, force=True)
    assert result.outcome == "refreshed"
    assert result.read is not None
    assert result.read.connection.id == cid
    assert result.read.connection.status == "active"
    # The patient disconnects (and erases) between the refresh and the pull it was for.
    await disconnect_connection(ctx, cid, by="patient", erase=True)
    mark = log_size(sandbox)

    source = TokenSource(ctx, cid, known=result.tokens)
    summary = await asyncio.wait_for(
        pull_connection(ctx, cid, source, caller_closes=True, read=result.read), STEP_TIMEOUT
    )

    assert summary.outcome == "inactive"
    assert list(sandbox.state.request_log)[mark:] == []
    async with ctx.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(SyncRun)) == 0
        assert await session.scalar(select(func.count()).select_from(SyncState)) == 0
        assert await session.scalar(select(func.count()).select_from(Resource)) == 0
