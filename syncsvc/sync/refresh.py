"""Token refresh of one leased connection: the single-flight exchange with the EHR.

The caller holds the connection's lease (``claim_due_connections``). A refresh is three steps and
never holds a transaction across the network: (1) check the lease (renewing it if it runs short)
and read the connection, its tenant and tokens; (2) call the EHR's token endpoint; (3) in a
transaction of its own, check the answer against the binding
(:mod:`~syncsvc.sync.refresh_binding`), store it with compare-and-swap
(merged over the old tokens) and update the connection's bookkeeping and grant
(:mod:`~syncsvc.sync.refresh_scopes`), committed before the new access token is handed to anyone.
A crash between the EHR rotating a refresh token and step 3 is the one window that can lose a
grant; the lease keeps a second worker from widening it.

When a refresh is due is :mod:`~syncsvc.sync.refresh_schedule`'s rule; what a failure does
(``needs_reauth``, or back off keeping every token) is :mod:`~syncsvc.sync.refresh_outcomes`'.
Callers that want an access token use :class:`~syncsvc.sync.token_source.TokenSource`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import connection_claims, repo
from syncsvc.db.models.connections import Connection, Tenant
from syncsvc.errors import Conflict, ReauthRequired, Transient
from syncsvc.logging import get_logger
from syncsvc.netguard import endpoint_problem, is_loopback_host
from syncsvc.smart.client_auth import ClientCredentials
from syncsvc.smart.oauth import TokenResponse, refresh_tokens
from syncsvc.sync.tenant_config import client_credentials, revocation_endpoint
from syncsvc.vocabulary import OFFLINE_ACCESS_NOT_GRANTED

from .connection_read import ConnectionRead
from .context import SyncContext
from .credentials import StoredTokens, load_tokens, save_tokens, tokens_of
from .misbound import ATTEMPT_TIMEOUT_SECONDS, MisboundEnd, revoke_now
from .refresh_binding import end_if_misbound
from .refresh_outcomes import (
    RefreshResult,
    fresh_connection,
    needs_reauth,
    record_failure,
    theirs,
)
from .refresh_schedule import RefreshSchedule, next_refresh_at
from .refresh_scopes import rescope
from .revocation_queue import GrantToEnd, queue_revocation

log = get_logger("syncsvc.sync.refresh")

#: The share of ``lease_seconds`` a refresh needs left on its lease before it calls the EHR; with
#: less it renews the lease first. The runner's renewals keep two thirds of it left, so this
#: renewal is for a runner whose renewals fell behind.
LEASE_LEFT_TO_CALL = 1 / 2


@dataclass(frozen=True)
class _Snapshot:
    """What transaction 1 read: the connection (detached), its tenant, client credentials and
    tokens."""

    connection: Connection
    tenant: Tenant
    credentials: ClientCredentials
    tokens: StoredTokens | None


class _Refresh:
    """One refresh attempt of one leased connection: read, decide, ask the EHR, store."""

    def __init__(self, ctx: SyncContext, connection_id: str, *, force: bool, refused: bool):
        self._ctx = ctx
        self._id = connection_id
        #: Refresh even when not due (still never sooner than the minimum interval).
        self._force = force
        #: The EHR already turned the access token down with a 401, whatever its expiry said.
        self._refused = refused
        self._schedule = RefreshSchedule.from_settings(ctx.settings)
        #: The connection as the last transaction of this refresh left it, and its tenant.
        self.left: ConnectionRead | None = None

    async def run(self) -> RefreshResult:
        """Step 1, then the EHR only if the refresh is due and allowed."""
        result = await self._run()
        if result.outcome in ("refreshed", "not_due") and self.left is not None:
            return dataclasses.replace(result, read=self.left)
        return result

    async def _run(self) -> RefreshResult:
        now = self._ctx.now()
        snapshot = await self._read(now)
        if snapshot is None:
            return RefreshResult(
                "lost_lease", None, message="The lease on this connection was lost."
            )
        connection, tokens = snapshot.connection, snapshot.tokens
        if connection.status != "active":
            return RefreshResult(
                "needs_reauth",
                tokens,
                message=connection.status_message or f"The connection is {connection.status}.",
                reason=connection.status_reason or connection.status,
                error_uri=connection.error_uri,
            )
        if tokens is None:
            return await needs_reauth(
                self._ctx, self._id, reason="tokens_missing", tokens=None, now=now
            )
        if tokens.refresh_token is None:
            return await self._without_offline_access(snapshot, tokens, now)
        withheld = await self._withheld(snapshot, tokens, now)
        if withheld is not None:
            return withheld
        return await self._call_ehr(snapshot, tokens, tokens.refresh_token)

    async def _read(self, now: dt.datetime) -> _Snapshot | None:
        """Transaction 1: read what a refresh needs, checking (and if it runs short, renewing)
        the lease; None if the lease is lost.

        The runner claimed the lease moments ago and renews it every third of its length while
        it works the connection, so the check is usually a read and the transaction writes
        nothing: the lease is renewed here only when less than :data:`LEASE_LEFT_TO_CALL` of it
        is left, so the EHR's answer always comes back well inside it.
        """
        ctx = self._ctx
        lease_seconds = ctx.settings.lease_seconds

        async def read(session: AsyncSession) -> _Snapshot | None:
            found = await repo.get_connection_with(session, self._id, credentials=True)
            if found is None:
                return None
            connection, tenant, row = found
            until = connection.lease_until
            if connection.lease_owner != ctx.owner or until is None or until <= now:
                return None
            if until - now < dt.timedelta(seconds=lease_seconds * LEASE_LEFT_TO_CALL):
                renewed = await connection_claims.renew_lease(
                    session, self._id, ctx.owner, now=now, lease_seconds=lease_seconds
                )
                if not renewed:
                    return None
            tokens = None if row is None else tokens_of(ctx.vault, row)
            return _Snapshot(connection, tenant, client_credentials(ctx.vault, tenant), tokens)

        # Through the connection's group writer, like the run's own writes: its session serves
        # the reads of refreshes due together, in one transaction.
        snapshot = await ctx.pages.run(self._id, read, beside_pages=True)
        if snapshot is not None:
            self.left = ConnectionRead(snapshot.connection, snapshot.tenant)
        return snapshot

    def _due(self, snapshot: _Snapshot, tokens: StoredTokens, now: dt.datetime) -> dt.datetime:
        return next_refresh_at(
            self._schedule,
            now=now,
            access_expires_at=tokens.access_expires_at,
            last_refresh_at=snapshot.connection.last_refresh_at,
            next_sync_at=snapshot.connection.next_sync_at,
            connected_at=snapshot.connection.connected_at,
            has_refresh_token=tokens.refresh_token is not None,
            refresh_expires_at=tokens.refresh_expires_at,
        )

    async def _without_offline_access(
        self, snapshot: _Snapshot, tokens: StoredTokens, now: dt.datetime
    ) -> RefreshResult:
        """No refresh token: the EHR has nothing to refresh; the access token lasts, or not."""
        if tokens.access_valid(now) and not self._refused:
            await self._record_schedule(snapshot, self._due(snapshot, tokens, now), now)
            return RefreshResult("not_due", tokens, message="No refresh token was granted.")
        return await needs_reauth(
            self._ctx, self._id, reason=OFFLINE_ACCESS_NOT_GRANTED, tokens=tokens, now=now
        )

    async def _withheld(
        self, snapshot: _Snapshot, tokens: StoredTokens, now: dt.datetime
    ) -> RefreshResult | None:
        """Why the EHR is not asked now (backing off, not due, refreshed moments ago), if so."""
        connection = snapshot.connection
        if connection.backoff_until is not None and connection.backoff_until > now:
            return RefreshResult(
                "transient",
                tokens,
                message="Backing off after a failed refresh.",
                retry_at=connection.backoff_until,
            )
        due = self._due(snapshot, tokens, now)
        if not self._force and now < due:
            await self._record_schedule(snapshot, due, now)
            return RefreshResult("not_due", tokens)
        throttle_until = (
            connection.last_refresh_at + self._schedule.min_interval
            if connection.last_refresh_at is not None
            else None
        )
        if throttle_until is not None and now < throttle_until:
            # Even a forced refresh waits out the minimum interval: the EHR would answer 429.
            if tokens.access_valid(now):
                return RefreshResult("not_due", tokens, message="Refreshed moments ago.")
            return RefreshResult(
                "transient", tokens, message="Refreshed moments ago.", retry_at=throttle_until
            )
        return None

    async def _record_schedule(
        self, snapshot: _Snapshot, due: dt.datetime, now: dt.datetime
    ) -> None:
        """Write ``next_refresh_at`` when it moved, so the scheduler does not claim it again now."""
        if snapshot.connection.next_refresh_at == due:
            return
        async with self._ctx.sessionmaker.begin() as session:
            connection = await fresh_connection(session, snapshot.connection.id)
            connection.next_refresh_at = due
            connection.updated_at = now
        self.left = ConnectionRead(connection, snapshot.tenant)

    async def _call_ehr(
        self, snapshot: _Snapshot, tokens: StoredTokens, refresh_token: str
    ) -> RefreshResult:
        """Step 2, outside any transaction: the token request, then transaction 2 for its end."""
        connection = snapshot.connection
        local = is_loopback_host(urlsplit(connection.fhir_base).hostname)
        problem = endpoint_problem(connection.token_endpoint, loopback_tenant=local)
        if problem is not None:
            # Stored before endpoints were checked: the refresh token never goes there.
            refused = ReauthRequired(
                f"The token endpoint this connection was made with {problem}; reconnect.",
                reason="token_endpoint_refused",
            )
            return await record_failure(self._ctx, tokens, refused)
        try:
            response = await refresh_tokens(
                self._ctx.http,
                # The binding: this grant's tokens only ever go to the endpoint that issued them.
                token_endpoint=connection.token_endpoint,
                refresh_token=refresh_token,
                credentials=snapshot.credentials,
                clock=self._ctx.clock,
            )
        except (ReauthRequired, Transient) as exc:
            return await record_failure(self._ctx, tokens, exc)
        now = self._ctx.now()
        return await self._stored(snapshot, tokens, response, now)

    async def _stored(
        self,
        snapshot: _Snapshot,
        previous: StoredTokens,
        response: TokenResponse,
        now: dt.datetime,
    ) -> RefreshResult:
        """Transaction 2 after a successful refresh: the binding check, tokens and bookkeeping.

        The connection is not read again: transaction 1's copy is taken into this session as it
        was read, and only the columns changed here are written. What the refresh decides on
        (base, patient, grant, status) is changed only by a refresh, which the lease keeps to
        this process, or by a reconnect or disconnect, which replace or delete the tokens: the
        compare-and-swap of the tokens then fails, and the race is settled as lost.
        """

        async def store(session: AsyncSession) -> tuple[RefreshResult, MisboundEnd | None]:
            # Run again alone if its group fails: it reads and sets only what it was given.
            connection = await session.merge(snapshot.connection, load=False)
            ended = await end_if_misbound(
                self._ctx,
                session,
                connection=connection,
                previous=previous,
                response=response,
                now=now,
            )
            if ended is not None:
                reason = connection.status_reason
                return RefreshResult("misbound", None, message=ended.message, reason=reason), ended
            result = await self._store_in(
                session, snapshot, connection, previous=previous, response=response, now=now
            )
            self.left = ConnectionRead(connection, snapshot.tenant)
            return result, None

        # Through the connection's group writer: stores of refreshes ending together share a
        # transaction, and it is committed before the new access token is handed to anyone.
        result, ended = await self._ctx.pages.run(self._id, store, beside_pages=True)
        if ended is not None:
            await revoke_now(self._ctx, ended, timeout_seconds=ATTEMPT_TIMEOUT_SECONDS)
        return result

    async def _store_in(
        self,
        session: AsyncSession,
        snapshot: _Snapshot,
        connection: Connection,
        *,
        previous: StoredTokens,
        response: TokenResponse,
        now: dt.datetime,
    ) -> RefreshResult:
        """Store a refresh's tokens (compare-and-swap) and the connection's bookkeeping."""
        ctx = self._ctx
        try:
            stored = await save_tokens(
                session, ctx.vault, connection.id, response, previous=previous, now=now
            )
        except Conflict:
            return await self._lost_race(session, snapshot, connection, response, now)
        connection.last_refresh_at = now
        connection.failure_count = 0
        connection.backoff_until = None
        connection.next_refresh_at = next_refresh_at(
            self._schedule,
            now=now,
            access_expires_at=stored.access_expires_at,
            last_refresh_at=now,
            next_sync_at=connection.next_sync_at,
            connected_at=connection.connected_at,
            has_refresh_token=stored.refresh_token is not None,
            refresh_expires_at=stored.refresh_expires_at,
        )
        connection.updated_at = now
        change = await rescope(
            ctx,
            session,
            connection,
            response,
            holds_refresh_token=stored.refresh_token is not None,
            now=now,
        )
        return RefreshResult("refreshed", stored, scope_change=change)

    async def _lost_race(
        self,
        session: AsyncSession,
        snapshot: _Snapshot,
        connection: Connection,
        response: TokenResponse,
        now: dt.datetime,
    ) -> RefreshResult:
        """Another writer (a worker whose lease we took over, or a reconnect) stored first.

        Theirs are at least as new as ours; ours are dropped, theirs are scheduled.
        """
        current = await load_tokens(session, self._ctx.vault, connection.id)
        if current is None:
            # Disconnected while the EHR was answering: the tokens it just issued belong to
            # nobody now, so they are queued for revocation like the disconnect's own.
            await self._orphaned(session, snapshot, response, now)
            return RefreshResult(
                "needs_reauth",
                None,
                message="The connection was disconnected during the refresh.",
                reason="disconnected",
            )
        connection.next_refresh_at = next_refresh_at(
            self._schedule,
            now=now,
            access_expires_at=current.access_expires_at,
            last_refresh_at=connection.last_refresh_at,
            next_sync_at=connection.next_sync_at,
            connected_at=connection.connected_at,
            has_refresh_token=current.refresh_token is not None,
            refresh_expires_at=current.refresh_expires_at,
        )
        connection.updated_at = now
        return theirs(current)

    async def _orphaned(
        self,
        session: AsyncSession,
        snapshot: _Snapshot,
        response: TokenResponse,
        now: dt.datetime,
    ) -> None:
        """Queue the token of a refresh whose connection was disconnected meanwhile."""
        tenant = await repo.get_tenant(session, snapshot.connection.tenant_id)
        if tenant is None:
            return
        endpoint = revocation_endpoint(tenant, snapshot.connection.token_endpoint)
        if endpoint is None:
            return
        grant = GrantToEnd.of(response.refresh_token, response.access_token)
        if grant is None:  # pragma: no cover - a token response always carries an access token
            return
        await queue_revocation(
            session,
            self._ctx.vault,
            tenant_id=tenant.id,
            connection_id=snapshot.connection.id,
            endpoint=endpoint,
            grant=grant,
            now=now,
        )


class Schedulable(Protocol):
    """What :func:`reschedule_refresh` reads of a connection, and the one field it moves."""

    @property
    def id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def backoff_until(self) -> dt.datetime | None: ...
    @property
    def last_refresh_at(self) -> dt.datetime | None: ...
    @property
    def next_sync_at(self) -> dt.datetime | None: ...
    @property
    def connected_at(self) -> dt.datetime | None: ...

    next_refresh_at: dt.datetime | None


async def reschedule_refresh(
    session: AsyncSession,
    ctx: SyncContext,
    connection: Schedulable,
    *,
    now: dt.datetime,
    expiry: repo.TokenLifetimes | Literal["unread"] | None = "unread",
) -> None:
    """Move ``next_refresh_at`` after the connection's next sync moved (caller's transaction).

    The refresh a sync needs falls due with that sync, so it follows ``next_sync_at``. A refresh
    backing off after a failure keeps its retry time; an inactive connection has none.
    ``expiry``: :func:`~syncsvc.db.repo.token_lifetimes` if the caller read them with the
    connection (None: no tokens stored).
    """
    if connection.status != "active":
        return
    if connection.backoff_until is not None and connection.backoff_until > now:
        return
    if expiry == "unread":
        # Not flushed first: the caller's changes and this one go in one UPDATE at commit.
        with session.no_autoflush:
            expiry = await repo.token_lifetimes(session, connection.id)
    if expiry is None:
        return
    connection.next_refresh_at = next_refresh_at(
        RefreshSchedule.from_settings(ctx.settings),
        now=now,
        access_expires_at=expiry.access_expires_at,
        last_refresh_at=connection.last_refresh_at,
        next_sync_at=connection.next_sync_at,
        connected_at=connection.connected_at,
        has_refresh_token=expiry.has_refresh_token,
        refresh_expires_at=expiry.refresh_expires_at,
    )


async def refresh_connection(
    ctx: SyncContext, connection_id: str, *, force: bool = False, refused: bool = False
) -> RefreshResult:
    """Refresh one leased connection's tokens if due (or ``force``), committing before returning.

    Outcomes: ``refreshed`` (new tokens stored, or another writer's found), ``not_due``,
    ``needs_reauth`` (the patient must reconnect; retrying stopped), ``misbound`` (renewed for
    someone else; ended), ``transient`` (backing off; old tokens kept) and ``lost_lease`` (no
    EHR call was made).
    """
    result = await _Refresh(ctx, connection_id, force=force, refused=refused).run()
    fields = {
        "outcome": result.outcome,
        "forced": force,
        "reason": result.reason,
        "detail": result.message,
        "retry_at": result.retry_at.isoformat() if result.retry_at else None,
        "access_expires_at": result.tokens.access_expires_at.isoformat()
        if result.tokens is not None and result.tokens.access_expires_at is not None
        else None,
    }
    bound = log.bind(connection_id=connection_id)
    if result.outcome in ("needs_reauth", "misbound", "transient"):
        bound.warning("refresh", **fields)
    elif result.outcome == "not_due":
        bound.debug("refresh", **fields)
    else:
        bound.info("refresh", **fields)
    return result


__all__ = ["RefreshResult", "refresh_connection", "reschedule_refresh"]
