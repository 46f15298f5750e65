"""Token refresh of one connection: when it is due, the single-flight refresh, and its outcomes.

The caller holds the connection's lease (``claim_due_connections``). A refresh is three steps and
never holds a transaction across the network: (1) renew the lease and read the connection, its
tenant and tokens; (2) call the EHR's token endpoint; (3) in a transaction of its own, store the
answer with compare-and-swap and update the connection's bookkeeping, committed before the new
access token is handed to anyone. A crash between the EHR rotating a refresh token and step 3 is
the one window that can lose a grant; the lease keeps a second worker from widening it.

Failures follow the two axes of :mod:`syncsvc.errors`: :class:`~syncsvc.errors.ReauthRequired`
marks the connection ``needs_reauth`` and stops retrying; :class:`~syncsvc.errors.Transient`
backs off (honouring ``Retry-After``) and keeps every stored token untouched.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import repo
from syncsvc.db.event_repo import add_event
from syncsvc.db.models import Connection
from syncsvc.errors import Conflict, ReauthRequired, Transient
from syncsvc.logging import get_logger
from syncsvc.netguard import endpoint_problem, is_loopback_host
from syncsvc.settings import Settings
from syncsvc.smart.binding import foreign_patient, foreign_tenant
from syncsvc.smart.client_auth import ClientCredentials
from syncsvc.smart.oauth import TokenResponse, refresh_tokens
from syncsvc.sync import webhook_outbox
from syncsvc.sync.tenant_config import client_credentials, revocation_endpoint
from syncsvc.vocabulary import (
    OFFLINE_ACCESS_EXPIRED_MESSAGE,
    OFFLINE_ACCESS_NOT_GRANTED,
    SCOPES_WITHDRAWN,
    RefreshOutcome,
)

from .backoff import Backoff
from .context import SyncContext
from .credentials import StoredTokens, load_tokens, save_tokens
from .grant_states import GrantChange, grant_change, readable_types, reconcile_type_states, rescoped
from .misbound import (
    ATTEMPT_TIMEOUT_SECONDS,
    PATIENT_MISMATCH,
    TENANT_MISMATCH,
    MisboundEnd,
    end_misbound,
    revoke_now,
)
from .revocation_queue import GrantToEnd, queue_revocation

#: Retry policy for failed refreshes: a first retry within 15 s, at most an hour apart.
REFRESH_BACKOFF = Backoff(base_seconds=15.0, cap_seconds=3600.0)
OFFLINE_ACCESS = "offline_access"
#: ``Connection.status_reason`` is a String(64).
REASON_LENGTH = 64

#: What each reauth reason means, in words a patient or operator can act on.
_REAUTH_MESSAGES: dict[str, str] = {
    "invalid_grant": (
        "The EHR no longer accepts this connection (it was revoked, expired or left unused too "
        "long). The patient needs to connect again."
    ),
    "invalid_client": (
        "The EHR no longer recognises this application's registration. The operator must fix "
        "the registration, then the patient connects again."
    ),
    "unauthorized_client": (
        "The EHR no longer allows this application to renew access. The operator must fix the "
        "registration, then the patient connects again."
    ),
    "empty_scopes": (
        "The EHR withdrew every permission this connection had. The patient needs to connect again."
    ),
    "invalid_scope": (
        "The EHR no longer grants the permissions this connection had. The patient needs to "
        "connect again."
    ),
    OFFLINE_ACCESS_NOT_GRANTED: OFFLINE_ACCESS_EXPIRED_MESSAGE,
    "tokens_missing": (
        "No tokens are stored for this connection. The patient needs to connect again."
    ),
}
DEFAULT_REAUTH_MESSAGE = (
    "The EHR refused to renew this connection's access. The patient needs to connect again."
)


@dataclass(frozen=True)
class RefreshResult:
    """What one refresh attempt did. Tokens are kept out of ``repr`` by :class:`StoredTokens`."""

    outcome: RefreshOutcome
    #: The current tokens after the call (when known).
    tokens: StoredTokens | None
    message: str | None = None
    retry_at: dt.datetime | None = None
    #: For ``needs_reauth``: the stable reason code and the EHR's error page, if it gave one.
    #: For ``transient``: the failure's reason code when the EHR was asked (None when not).
    reason: str | None = None
    error_uri: str | None = None
    #: For ``refreshed``: the readable types the response took away or gave, if any.
    scope_change: GrantChange | None = None


@dataclass(frozen=True)
class RefreshSchedule:
    """The scheduling rule's parameters, from :class:`~syncsvc.settings.Settings`."""

    margin: dt.timedelta
    min_interval: dt.timedelta
    keepalive: dt.timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> RefreshSchedule:
        """The schedule configured for this process."""
        return cls(
            margin=dt.timedelta(seconds=settings.refresh_margin_seconds),
            min_interval=dt.timedelta(seconds=settings.min_refresh_interval_seconds),
            keepalive=dt.timedelta(days=settings.keepalive_days),
        )


def next_refresh_at(
    schedule: RefreshSchedule,
    *,
    now: dt.datetime,
    access_expires_at: dt.datetime | None,
    last_refresh_at: dt.datetime | None,
    connected_at: dt.datetime | None = None,
    has_refresh_token: bool = True,
) -> dt.datetime:
    """When a grant should next be refreshed (the scheduling rule; pure).

    ``margin`` before the access token expires, and at least every ``keepalive`` since the grant
    was last exercised (last refresh, else the launch): Cerner revokes offline access unused for
    about three months. Never sooner than ``min_interval`` after the last refresh: Cerner answers
    faster refreshes of one grant with 429. A grant without a refresh token cannot be refreshed;
    its next look is when the access token expires (the connection then needs the patient).
    """
    if not has_refresh_token:
        return access_expires_at or now
    ahead = access_expires_at - schedule.margin if access_expires_at is not None else now
    anchor = last_refresh_at or connected_at or now
    due = min(ahead, anchor + schedule.keepalive)
    if last_refresh_at is not None:
        due = max(due, last_refresh_at + schedule.min_interval)
    return due


def _reauth_message(reason: str) -> str:
    return _REAUTH_MESSAGES.get(reason.replace("-", "_"), DEFAULT_REAUTH_MESSAGE)


@dataclass(frozen=True)
class _Snapshot:
    """What transaction 1 read: the connection (detached), client credentials and tokens."""

    connection: Connection
    credentials: ClientCredentials
    tokens: StoredTokens | None


async def _read(ctx: SyncContext, connection_id: str, now: dt.datetime) -> _Snapshot | None:
    """Transaction 1: renew the lease and read what a refresh needs; None if the lease is lost."""
    async with ctx.sessionmaker.begin() as session:
        renewed = await repo.renew_lease(
            session, connection_id, ctx.owner, now=now, lease_seconds=ctx.settings.lease_seconds
        )
        if not renewed:
            return None
        connection = await repo.get_connection(session, connection_id)
        if connection is None:
            return None
        tenant = await repo.get_tenant(session, connection.tenant_id)
        if tenant is None:
            return None
        tokens = await load_tokens(session, ctx.vault, connection_id)
        return _Snapshot(connection, client_credentials(ctx.vault, tenant), tokens)


async def _fresh_connection(session: AsyncSession, connection_id: str) -> Connection:
    connection = await repo.get_connection(session, connection_id)
    if connection is None:
        # Deleted (the patient disconnected) between the two transactions.
        raise Conflict("The connection was deleted during its refresh.")
    return connection


async def _record_schedule(
    ctx: SyncContext, snapshot: _Snapshot, due: dt.datetime, now: dt.datetime
) -> None:
    """Write ``next_refresh_at`` when it moved, so the scheduler does not claim this again now."""
    if snapshot.connection.next_refresh_at == due:
        return
    async with ctx.sessionmaker.begin() as session:
        connection = await _fresh_connection(session, snapshot.connection.id)
        connection.next_refresh_at = due
        connection.updated_at = now


async def _mark_needs_reauth(
    session: AsyncSession,
    connection_id: str,
    *,
    reason: str,
    error_uri: str | None,
    tokens: StoredTokens | None,
    now: dt.datetime,
) -> RefreshResult:
    """Mark the connection ``needs_reauth`` and stop scheduling refreshes for it."""
    reason = reason[:REASON_LENGTH]
    message = _reauth_message(reason)
    await repo.set_connection_status(
        session,
        connection_id,
        status="needs_reauth",
        now=now,
        reason=reason,
        message=message,
        error_uri=error_uri,
    )
    connection = await _fresh_connection(session, connection_id)
    connection.next_refresh_at = None
    connection.backoff_until = None
    return RefreshResult(
        "needs_reauth", tokens, message=message, reason=reason, error_uri=error_uri
    )


async def _needs_reauth(
    ctx: SyncContext,
    connection_id: str,
    *,
    reason: str,
    tokens: StoredTokens | None,
    now: dt.datetime,
) -> RefreshResult:
    """:func:`_mark_needs_reauth` in a transaction of its own."""
    async with ctx.sessionmaker.begin() as session:
        return await _mark_needs_reauth(
            session, connection_id, reason=reason, error_uri=None, tokens=tokens, now=now
        )


async def _someone_else_refreshed(
    session: AsyncSession, ctx: SyncContext, previous: StoredTokens
) -> StoredTokens | None:
    """The stored tokens if another writer replaced ``previous`` since it was read, else None."""
    current = await load_tokens(session, ctx.vault, previous.connection_id)
    if current is not None and current.version != previous.version:
        return current
    return None


def _theirs(tokens: StoredTokens) -> RefreshResult:
    return RefreshResult(
        "refreshed", tokens, message="Another worker stored newer tokens first; using those."
    )


async def _stored(
    ctx: SyncContext,
    snapshot: _Snapshot,
    previous: StoredTokens,
    response: TokenResponse,
    now: dt.datetime,
) -> RefreshResult:
    """Transaction 2 after a successful refresh: the binding check, tokens and bookkeeping."""
    async with ctx.sessionmaker.begin() as session:
        connection = await _fresh_connection(session, snapshot.connection.id)
        ended = await _check_binding(
            ctx, session, connection=connection, previous=previous, response=response, now=now
        )
        if ended is None:
            result = await _store_in(
                ctx,
                session,
                snapshot=snapshot,
                connection=connection,
                previous=previous,
                response=response,
                now=now,
            )
        else:
            result = RefreshResult(
                "misbound", None, message=ended.message, reason=connection.status_reason
            )
    if ended is not None:
        await revoke_now(ctx, ended, timeout_seconds=ATTEMPT_TIMEOUT_SECONDS)
    return result


async def _store_in(
    ctx: SyncContext,
    session: AsyncSession,
    *,
    snapshot: _Snapshot,
    connection: Connection,
    previous: StoredTokens,
    response: TokenResponse,
    now: dt.datetime,
) -> RefreshResult:
    """Store a refresh's tokens (compare-and-swap) and the connection's bookkeeping."""
    schedule = RefreshSchedule.from_settings(ctx.settings)
    try:
        stored = await save_tokens(
            session, ctx.vault, connection.id, response, previous=previous, now=now
        )
    except Conflict:
        # Another writer (a worker whose lease we took over, or a reconnect) stored first.
        # Theirs are at least as new as ours; ours are dropped, theirs are scheduled.
        current = await load_tokens(session, ctx.vault, connection.id)
        if current is None:
            # Disconnected while the EHR was answering: the tokens it just issued belong to
            # nobody now, so they are queued for revocation like the disconnect's own.
            await _orphaned(ctx, session, snapshot, response, now)
            return RefreshResult(
                "needs_reauth",
                None,
                message="The connection was disconnected during the refresh.",
                reason="disconnected",
            )
        connection.next_refresh_at = next_refresh_at(
            schedule,
            now=now,
            access_expires_at=current.access_expires_at,
            last_refresh_at=connection.last_refresh_at,
            connected_at=connection.connected_at,
            has_refresh_token=current.refresh_token is not None,
        )
        connection.updated_at = now
        return _theirs(current)
    connection.last_refresh_at = now
    connection.failure_count = 0
    connection.backoff_until = None
    connection.next_refresh_at = next_refresh_at(
        schedule,
        now=now,
        access_expires_at=stored.access_expires_at,
        last_refresh_at=now,
        connected_at=connection.connected_at,
        has_refresh_token=stored.refresh_token is not None,
    )
    connection.updated_at = now
    change = await _rescope(
        ctx,
        session,
        connection,
        response,
        holds_refresh_token=stored.refresh_token is not None,
        now=now,
    )
    return RefreshResult("refreshed", stored, scope_change=change)


async def _rescope(
    ctx: SyncContext,
    session: AsyncSession,
    connection: Connection,
    response: TokenResponse,
    *,
    holds_refresh_token: bool,
    now: dt.datetime,
) -> GrantChange | None:
    """Record the grant a refresh response describes, when it changed (in the caller's tx).

    A narrowed grant marks the types it took away ``withdrawn`` (their data is kept), records
    one ``scope_withdrawn`` event per type and, when no readable type is left, makes the
    connection ``no_access``. A widened grant makes the connection due for a pull of its new
    types. Either way the host application hears ``connection.scopes_changed``.
    """
    if not response.scope_returned or not response.scopes:
        return None  # a response without ``scope`` says nothing about the grant
    granted = rescoped(
        connection.granted_scopes,
        connection.requested_scopes,
        response.scopes,
        holds_refresh_token=holds_refresh_token,
    )
    if granted is None:
        return None
    tenant = await repo.get_tenant(session, connection.tenant_id)
    if tenant is None:  # pragma: no cover - the foreign key forbids it
        return None
    change = grant_change(tenant, connection.granted_scopes, granted)
    connection.granted_scopes = granted
    if not change.changed:
        return None
    await reconcile_type_states(session, connection, tenant, now=now)
    if not readable_types(granted, tenant):
        connection.status = "no_access"
        connection.status_reason = SCOPES_WITHDRAWN
        connection.status_message = None
        connection.error_uri = None
        connection.next_sync_at = None
        connection.next_refresh_at = None
    elif change.added:
        connection.next_sync_at = now
    for resource_type in change.withdrawn:
        await add_event(
            session,
            tenant_id=connection.tenant_id,
            connection_id=connection.id,
            kind="scopes",
            outcome="withdrawn",
            at=now,
            error_class="scope_withdrawn",
            resource_type=resource_type,
            detail=f"A refresh narrowed the grant: {resource_type} is no longer granted.",
        )
    for resource_type in change.added:
        await add_event(
            session,
            tenant_id=connection.tenant_id,
            connection_id=connection.id,
            kind="scopes",
            outcome="added",
            at=now,
            resource_type=resource_type,
            detail=f"A refresh widened the grant: {resource_type} is now granted.",
        )
    await session.flush()
    await webhook_outbox.enqueue(
        session,
        ctx.settings,
        "connection.scopes_changed",
        connection=connection,
        data={"withdrawn": list(change.withdrawn), "added": list(change.added)},
        now=now,
    )
    get_logger(__name__).info(
        "grant changed at refresh",
        connection_id=connection.id,
        withdrawn=list(change.withdrawn),
        added=list(change.added),
        status=connection.status,
    )
    return change


async def _check_binding(
    ctx: SyncContext,
    session: AsyncSession,
    *,
    connection: Connection,
    previous: StoredTokens,
    response: TokenResponse,
    now: dt.datetime,
) -> MisboundEnd | None:
    """End the grant before its new token is stored if the EHR renewed it for someone else.

    A refresh response naming another patient, or another tenant (Cerner's ``tenant`` field,
    a readable token's tenant claim), makes the connection ``misbound``: nothing it returned is
    stored or used, and the newest token of the grant is queued for revocation.
    """
    other_patient = foreign_patient(connection.patient_id, response)
    other_tenant = None if other_patient else foreign_tenant(connection.fhir_base, response)
    if other_patient is None and other_tenant is None:
        return None
    tenant = await repo.get_tenant(session, connection.tenant_id)
    if tenant is None:  # pragma: no cover - the foreign key forbids it
        return None
    refresh_token = response.refresh_token or previous.refresh_token
    ended = await end_misbound(
        session,
        vault=ctx.vault,
        owner=ctx.owner,
        connection=connection,
        tenant=tenant,
        grant=GrantToEnd.of(refresh_token, response.access_token),
        reason=PATIENT_MISMATCH if other_patient else TENANT_MISMATCH,
        foreign=other_tenant,
        stage="refresh",
        now=now,
    )
    await session.refresh(connection)
    return ended


async def _orphaned(
    ctx: SyncContext,
    session: AsyncSession,
    snapshot: _Snapshot,
    response: TokenResponse,
    now: dt.datetime,
) -> None:
    """Queue the token of a refresh whose connection was disconnected meanwhile for revocation."""
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
        ctx.vault,
        tenant_id=tenant.id,
        connection_id=snapshot.connection.id,
        endpoint=endpoint,
        grant=grant,
        now=now,
    )


async def _failed(
    ctx: SyncContext, previous: StoredTokens, error: ReauthRequired | Transient
) -> RefreshResult:
    """Transaction 2 after a failed refresh: needs_reauth, or back off keeping every token."""
    now = ctx.now()
    async with ctx.sessionmaker.begin() as session:
        # A refresh token rotated away by another writer is refused with invalid_grant: that is
        # not the patient's grant failing, and must not cost them the connection.
        theirs = await _someone_else_refreshed(session, ctx, previous)
        if theirs is not None:
            return _theirs(theirs)
        if isinstance(error, ReauthRequired):
            return await _mark_needs_reauth(
                session,
                previous.connection_id,
                reason=error.reason,
                error_uri=error.error_uri,
                tokens=previous,
                now=now,
            )
        connection = await _fresh_connection(session, previous.connection_id)
        connection.failure_count += 1
        retry_at = REFRESH_BACKOFF.retry_at(
            now, connection.failure_count, retry_after=error.retry_after
        )
        connection.backoff_until = retry_at
        connection.next_refresh_at = retry_at
        connection.updated_at = now
    return RefreshResult(
        "transient", previous, message=error.message, retry_at=retry_at, reason=error.reason
    )


async def _refresh(
    ctx: SyncContext, connection_id: str, *, force: bool, refused: bool = False
) -> RefreshResult:
    now = ctx.now()
    snapshot = await _read(ctx, connection_id, now)
    if snapshot is None:
        return RefreshResult("lost_lease", None, message="The lease on this connection was lost.")
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
        return await _needs_reauth(
            ctx, connection_id, reason="tokens_missing", tokens=None, now=now
        )
    schedule = RefreshSchedule.from_settings(ctx.settings)
    due = next_refresh_at(
        schedule,
        now=now,
        access_expires_at=tokens.access_expires_at,
        last_refresh_at=connection.last_refresh_at,
        connected_at=connection.connected_at,
        has_refresh_token=tokens.refresh_token is not None,
    )
    if tokens.refresh_token is None:
        # No offline access: the EHR has nothing to refresh. Use the access token while it lasts
        # (``refused``: the EHR already turned it down with a 401, whatever its expiry said).
        if tokens.access_valid(now) and not refused:
            await _record_schedule(ctx, snapshot, due, now)
            return RefreshResult("not_due", tokens, message="No refresh token was granted.")
        return await _needs_reauth(
            ctx,
            connection_id,
            reason=OFFLINE_ACCESS_NOT_GRANTED,
            tokens=tokens,
            now=now,
        )
    if connection.backoff_until is not None and connection.backoff_until > now:
        return RefreshResult(
            "transient",
            tokens,
            message="Backing off after a failed refresh.",
            retry_at=connection.backoff_until,
        )
    if not force and now < due:
        await _record_schedule(ctx, snapshot, due, now)
        return RefreshResult("not_due", tokens)
    throttle_until = (
        connection.last_refresh_at + schedule.min_interval
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
    return await _call_ehr(ctx, snapshot, tokens, tokens.refresh_token)


async def _call_ehr(
    ctx: SyncContext, snapshot: _Snapshot, tokens: StoredTokens, refresh_token: str
) -> RefreshResult:
    """Step 2, outside any transaction: the token request, then transaction 2 for its outcome."""
    connection = snapshot.connection
    local = is_loopback_host(urlsplit(connection.fhir_base).hostname)
    problem = endpoint_problem(connection.token_endpoint, loopback_tenant=local)
    if problem is not None:
        # Stored before endpoints were checked: the refresh token never goes there.
        refused = ReauthRequired(
            f"The token endpoint this connection was made with {problem}; reconnect.",
            reason="token_endpoint_refused",
        )
        return await _failed(ctx, tokens, refused)
    try:
        response = await refresh_tokens(
            ctx.http,
            # The binding: this grant's tokens only ever go to the endpoint that issued them.
            token_endpoint=snapshot.connection.token_endpoint,
            refresh_token=refresh_token,
            credentials=snapshot.credentials,
            clock=ctx.clock,
        )
    except (ReauthRequired, Transient) as exc:
        return await _failed(ctx, tokens, exc)
    now = ctx.now()
    return await _stored(ctx, snapshot, tokens, response, now)


async def refresh_connection(
    ctx: SyncContext, connection_id: str, *, force: bool = False, refused: bool = False
) -> RefreshResult:
    """Refresh one leased connection's tokens if due (or ``force``), committing before returning.

    Outcomes: ``refreshed`` (new tokens stored, or another writer's found), ``not_due``,
    ``needs_reauth`` (the patient must reconnect; retrying stopped), ``transient`` (backing
    off; old tokens kept) and ``lost_lease`` (no EHR call was made).
    """
    log = get_logger(__name__).bind(connection_id=connection_id)
    result = await _refresh(ctx, connection_id, force=force, refused=refused)
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
    if result.outcome in ("needs_reauth", "misbound", "transient"):
        log.warning("refresh", **fields)
    elif result.outcome == "not_due":
        log.debug("refresh", **fields)
    else:
        log.info("refresh", **fields)
    return result
