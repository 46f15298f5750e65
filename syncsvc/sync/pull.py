"""Pulling one connection's record: every granted type, paged, incremental where possible.

One run pulls its types side by side (:data:`TYPES_AT_ONCE` at a time, the others once the EHR
has answered the first type with success). Each page is decoded by the context's decoder (in this
thread, or in a page-decoding process; see ``syncsvc.sync.pipeline.decode``) and handed to the
connection's group writer as it arrives; pages are committed in short transactions (never one
held across an HTTP call). A type's watermark moves only when the type completed, so a crash or a
transient failure makes the next run redo that type idempotently (unchanged resources are
compared, not rewritten).
Every run leaves a ``sync_runs`` row and per-type ``sync_states``.

Requests are retried in place first (:mod:`syncsvc.sync.grant_client`: 502/503/504, 429, 408,
timeouts, resets). What still fails is sorted by how far it reaches:

* one type: 403 ``insufficient_scope`` (``denied`` until the grant changes), 400 and other
  refusals (``error`` with the OperationOutcome text), a ``next`` link outside the base, a paging
  loop, a page over the tenant's size or entry cap (``page_too_large``); 5xx, timeouts, resets
  and malformed answers (``transient_error``: the type is retried on its own back-off,
  :mod:`syncsvc.sync.type_schedule`, and becomes ``failing`` if it keeps failing). The other
  types still start and finish; the run is ``partial``.
* the whole run: 401 tenant-mismatch (the connection becomes ``misbound``), a 429 (the tenant
  is throttling: every connection of it waits), no connection to the base at all, a grant that
  can no longer be refreshed (``reauth``) or a token that cannot be had right now
  (``transient``: the caller backs off; stored pages are kept). Types already running then
  finish; no other starts.

A 401 ``invalid_token`` gets one forced token from the token source and one retry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import repo, resource_repo
from syncsvc.db.models import Connection, SyncState, Tenant, new_id
from syncsvc.errors import (
    Misbound,
    NotFound,
    ReauthRequired,
    SyncsvcError,
    Transient,
    VaultError,
)
from syncsvc.fhir.client import FhirRequestError, ForeignNextLink, PagingLoop, RequestTransient
from syncsvc.fhir.page_limits import PageTooLarge
from syncsvc.fhir.plans import TypePlan, VendorPlan, plan_for, supports_last_updated
from syncsvc.smart.scopes import covered_types
from syncsvc.sync.context import SyncContext
from syncsvc.sync.credentials import StoredTokens, load_tokens
from syncsvc.sync.grant_client import GrantClient, TokenSource, TokenUnavailable
from syncsvc.sync.grant_states import readable_types
from syncsvc.sync.misbound import (
    ATTEMPT_TIMEOUT_SECONDS,
    TENANT_MISMATCH,
    GrantToEnd,
    end_misbound,
    revoke_now,
)
from syncsvc.sync.pipeline.sink import TypePages
from syncsvc.sync.pipeline.store import Counts
from syncsvc.sync.tenant_config import resource_types_of, smart_configuration
from syncsvc.sync.type_schedule import RETRYING, after_failure, waiting_until
from syncsvc.vocabulary import NO_READABLE_TYPE, SYNCING_STATUSES, PullOutcome, TypeRunStatus

log = structlog.get_logger("syncsvc.sync.pull")


class CachedTokenSource:
    """A :data:`TokenSource` that reads the stored token once and reuses it while it lives.

    ``load(force)`` returns the connection's tokens (``ensure_access_token`` does: a database
    read and a decryption, refreshing first when due). A pull asks before every page; this
    answers from memory while the access token has ``margin_seconds`` left and goes back to
    ``load`` only when it runs short or the EHR refused it (``force``).

    A run's types ask at the same time, so one caller loads while the others wait for what it
    loaded: ``load`` may refresh the grant, and the same refresh token sent twice at once can
    cost a strict-rotation grant its life.
    """

    def __init__(
        self,
        load: Callable[[bool], Awaitable[StoredTokens]],
        clock: Callable[[], dt.datetime],
        *,
        margin_seconds: float = 60,
    ) -> None:
        self._load = load
        self._clock = clock
        self._margin = margin_seconds
        self._tokens: StoredTokens | None = None
        self._loading = asyncio.Lock()
        #: How often ``load`` was called (the rest were answered from memory).
        self.loads = 0

    async def __call__(self, force: bool) -> str:
        """An access token of the grant; a fresh one from ``load`` when ``force``."""
        seen = self._tokens
        if force or seen is None or not seen.access_valid(self._clock(), self._margin):
            async with self._loading:
                tokens = self._tokens
                if tokens is seen or tokens is None:
                    self.loads += 1
                    tokens = self._tokens = await self._load(force)
                # Otherwise another caller loaded while this one waited: the freshest there is
                # (a forced caller's refused token is the one that caller replaced).
        else:
            tokens = seen
        if tokens.access_token is None:
            raise Transient("No access token is available.")
        return tokens.access_token


#: An incremental pull asks for ``_lastUpdated`` after the watermark minus this, so a resource
#: committed at the EHR with a timestamp just before an earlier pull's newest one is not missed.
WATERMARK_OVERLAP = dt.timedelta(minutes=5)
#: How often a type that could be pulled incrementally is pulled in full instead, to notice
#: resources that vanished upstream (searches do not return deletions).
FULL_RECONCILIATION_INTERVAL = dt.timedelta(days=7)

RunOutcome = PullOutcome
TypeStatus = TypeRunStatus
Mode = Literal["full", "incremental", "none"]

#: Resource types of one connection pulled at once. A type begins and ends with waits (its
#: first answer, its last commits), and a patient has a dozen types, most of them a page or two:
#: one after another, those waits add up (a quarter of a bench round with just two types). The
#: tenant's limits still bound requests.
TYPES_AT_ONCE = 3
#: FHIR failure kinds that end only the type they happened on.
_TYPE_ERRORS = frozenset({"bad_request", "forbidden", "not_found", "gone", "unexpected"})


@dataclass
class TypeResult:
    """How one resource type fared in a run."""

    resource_type: str
    status: TypeStatus
    mode: Mode
    counts: Counts = field(default_factory=Counts)
    error_class: str | None = None
    error_message: str | None = None
    #: ``Type/id`` of resources the compartment guard refused (the first few).
    rejected: list[str] = field(default_factory=list)
    #: When a ``transient_error`` or ``failing`` type is tried again.
    next_attempt_at: dt.datetime | None = None

    def report(self) -> dict[str, Any]:
        """The JSON form kept in the run record."""
        return {
            "status": self.status,
            "mode": self.mode,
            **self.counts.as_dict(),
            "error_class": self.error_class,
            "error_message": self.error_message,
            "rejected_ids": self.rejected,
            "next_attempt_at": None
            if self.next_attempt_at is None
            else self.next_attempt_at.isoformat(),
        }


@dataclass
class RunSummary:
    """What a run did, and what the scheduler needs to plan the next one."""

    connection_id: str
    outcome: RunOutcome
    started_at: dt.datetime
    finished_at: dt.datetime
    run_id: str | None = None
    full: bool = False
    types: dict[str, TypeResult] = field(default_factory=dict)
    counts: Counts = field(default_factory=Counts)
    error_class: str | None = None
    error_message: str | None = None
    #: Seconds the EHR asked us to wait (429/503 ``Retry-After``), for the back-off.
    retry_after: float | None = None
    requests: int = 0
    bytes_received: int = 0
    #: Forced token refreshes after a 401 ``invalid_token``.
    forced_refreshes: int = 0
    #: The type whose failure ended the run (several may be left incomplete).
    stopped_type: str | None = None
    #: Requests retried in place, by reason (``http_503``, ``timeout``, ...).
    retries: dict[str, int] = field(default_factory=dict)
    #: When the connection is next due: the soonest of its types' own schedules (a type that
    #: failed is retried on its back-off, the others after the sync interval).
    next_due_at: dt.datetime | None = None

    @property
    def succeeded(self) -> bool:
        """Whether the run got through every type it could (some may be denied or in error)."""
        return self.outcome in ("ok", "partial")


class _StopRun(Exception):
    """A failure that ends the whole run."""

    def __init__(
        self,
        outcome: RunOutcome,
        error_class: str,
        message: str,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.error_class = error_class
        self.message = message
        self.retry_after = retry_after
        #: The type it happened on (set where the run's types are pulled).
        self.resource_type: str | None = None


class _TypeFailed(Exception):
    """A failure that ends one type; the run goes on with the next."""

    def __init__(
        self,
        status: TypeStatus,
        error_class: str,
        message: str,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_class = error_class
        self.message = message
        self.retry_after = retry_after


def grant_fingerprint(granted_scopes: Sequence[str]) -> str:
    """A digest of a grant's scopes: a denied type is retried once this changes."""
    joined = " ".join(sorted({scope.lower() for scope in granted_scopes}))
    return hashlib.sha256(joined.encode()).hexdigest()


def _instant(moment: dt.datetime) -> str:
    """A FHIR instant in UTC with milliseconds (``Z``, so nothing needs URL-escaping)."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class _Plan:
    """What one run will do for one type."""

    resource_type: str
    type_plan: TypePlan
    mode: Mode
    since: dt.datetime | None
    state: SyncState | None


async def pull_connection(
    ctx: SyncContext,
    connection_id: str,
    token_source: TokenSource,
    *,
    full: bool = False,
    types: Sequence[str] | None = None,
    on_type: Callable[[TypeResult], None] | None = None,
) -> RunSummary:
    """Pull a connection's granted resource types and store them; never raises for EHR failures.

    ``full`` forces a full pull (and vanished-resource reconciliation) of every type; ``types``
    narrows the run to those types (still only where the grant covers them); ``on_type`` hears
    about each type as it finishes (progress for a person watching a long pull).
    """
    started = ctx.now()
    run_id = new_id()

    async def begin(
        session: AsyncSession,
    ) -> tuple[Connection, Tenant, dict[str, SyncState]] | None:
        connection = await repo.get_connection(session, connection_id)
        if connection is None:
            raise NotFound("No such connection.")
        tenant = await repo.get_tenant(session, connection.tenant_id)
        if tenant is None:
            raise NotFound("No such tenant.")
        if connection.status not in SYNCING_STATUSES:
            return None
        if not readable_types(connection.granted_scopes, tenant):
            # The tenant's types changed under the grant: a run would read nothing and call
            # that ``ok``. The connection says what it is instead.
            await repo.set_connection_status(
                session, connection_id, status="no_access", now=started, reason=NO_READABLE_TYPE
            )
            return None
        states = await resource_repo.sync_states(session, connection_id)
        await resource_repo.start_run(
            session,
            run_id=run_id,
            connection_id=connection_id,
            owner=ctx.owner,
            full=full,
            now=started,
        )
        return connection, tenant, states

    begun = await ctx.pages.run(connection_id, begin, beside_pages=True)
    if begun is None:
        return RunSummary(connection_id, "inactive", started, started)
    connection, tenant, states = begun
    summary = RunSummary(connection_id, "ok", started, started, run_id=run_id, full=full)
    vendor_plan = plan_for(tenant.vendor, tenant.plan_overrides)
    client = GrantClient(
        ctx.http,
        connection.fhir_base,
        token_source,
        meter=ctx.metrics.tenant(tenant.name),
        limits=ctx.page_limits(vendor_plan.max_page_bytes, vendor_plan.max_page_entries),
        budget=ctx.page_budget,
        # A type already failing is tried once, on its own schedule: no waits in place.
        fail_fast={name for name, state in states.items() if state.status in RETRYING},
    )
    fingerprint = grant_fingerprint(connection.granted_scopes)
    interval = dt.timedelta(seconds=ctx.settings.sync_interval_seconds)
    plans, waiting = _plans(
        connection,
        tenant,
        vendor_plan,
        states,
        full=full,
        types=types,
        now=started,
        interval=interval,
    )
    try:
        await _run_types(
            ctx,
            client,
            connection,
            plans,
            fingerprint=fingerprint,
            summary=summary,
            on_type=on_type,
        )
    except _StopRun as stop:
        summary.outcome = stop.outcome
        summary.stopped_type = stop.resource_type
        summary.error_class = stop.error_class
        summary.error_message = stop.message
        summary.retry_after = stop.retry_after
        if stop.outcome == "misbound":
            await _end_misbound(ctx, connection, tenant)
    else:
        if any(r.status in _PARTIAL for r in summary.types.values()):
            summary.outcome = "partial"
    summary.requests = client.requests
    summary.bytes_received = client.bytes_received
    summary.forced_refreshes = client.forced_refreshes
    summary.retries = dict(client.retries)
    summary.finished_at = ctx.now()
    summary.next_due_at = _next_due(summary, waiting, interval)
    await _finish(ctx, summary)
    # Counted once the run record is committed, so the counter and the records agree.
    ctx.metrics.tenant(tenant.name).run(summary.outcome)
    return summary


#: Type statuses that make a run ``partial``.
_PARTIAL = frozenset({"denied", "error", "transient_error", "failing"})


def _next_due(
    summary: RunSummary, waiting: Mapping[str, dt.datetime], interval: dt.timedelta
) -> dt.datetime:
    """The soonest time one of the connection's types is due again after this run."""
    due = [*waiting.values(), summary.finished_at + interval]
    due.extend(
        r.next_attempt_at
        for r in summary.types.values()
        if r.status in RETRYING and r.next_attempt_at is not None
    )
    return min(due)


def _retry_run(connection: Connection, states: Mapping[str, SyncState]) -> bool:
    """Whether the connection was made due only by a type's own retry (not by its interval).

    Its ``next_sync_at`` is then exactly that type's ``next_attempt_at``: the run pulls the
    types that are due, and the others keep their normal schedule. A sync asked for now (or an
    interval come round) sets another time, and every type not waiting for a retry is pulled.
    """
    due = connection.next_sync_at
    return due is not None and any(
        state.status in RETRYING and state.next_attempt_at == due for state in states.values()
    )


async def _end_misbound(ctx: SyncContext, connection: Connection, tenant: Tenant) -> None:
    """The FHIR server refused the token for this tenant: end the grant, keep what was synced."""
    async with ctx.sessionmaker.begin() as session:
        current = await repo.get_connection(session, connection.id)
        if current is None or current.status == "misbound":
            return  # erased meanwhile, or already ended (by a refresh, say)
        try:
            tokens = await load_tokens(session, ctx.vault, connection.id)
        except VaultError:
            tokens = None  # unreadable: nothing to revoke, deleted all the same
        ended = await end_misbound(
            session,
            vault=ctx.vault,
            owner=ctx.owner,
            connection=current,
            tenant=tenant,
            grant=None
            if tokens is None
            else GrantToEnd.of(tokens.refresh_token, tokens.access_token),
            reason=TENANT_MISMATCH,
            foreign=None,
            stage="run",
            now=ctx.now(),
        )
    await revoke_now(ctx, ended, timeout_seconds=ATTEMPT_TIMEOUT_SECONDS)


def _plans(
    connection: Connection,
    tenant: Tenant,
    vendor_plan: VendorPlan,
    states: Mapping[str, SyncState],
    *,
    full: bool,
    types: Sequence[str] | None,
    now: dt.datetime,
    interval: dt.timedelta,
) -> tuple[list[_Plan], dict[str, dt.datetime]]:
    """The plans of the types due in this run, and when each of the others is due."""
    # Only what the *granted* scopes cover, in the operator's order for this tenant.
    wanted = covered_types(connection.granted_scopes, resource_types_of(tenant))
    # A forced run, or one narrowed to named types, pulls them whatever their schedule.
    scheduled = not full and types is None
    if types is not None:
        wanted = [t for t in wanted if t in set(types)]
    retry_run = scheduled and _retry_run(connection, states)
    config = smart_configuration(tenant)
    plans: list[_Plan] = []
    waiting: dict[str, dt.datetime] = {}
    for resource_type in wanted:
        type_plan = vendor_plan.for_type(resource_type)
        state = states.get(resource_type)
        if scheduled:
            wait = waiting_until(state, now)
            if (
                wait is None
                and retry_run
                and state is not None
                and state.status not in RETRYING
                and state.last_attempt_at is not None
                and state.last_attempt_at + interval > now
            ):
                wait = state.last_attempt_at + interval
            if wait is not None:
                waiting[resource_type] = wait
                continue
        incremental_ok = resource_type != "Patient" and supports_last_updated(type_plan, config)
        due_full = (
            full
            or not incremental_ok
            or state is None
            or state.watermark is None
            or state.last_full_at is None
            or now - state.last_full_at >= FULL_RECONCILIATION_INTERVAL
        )
        if due_full:
            plans.append(_Plan(resource_type, type_plan, "full", None, state))
        else:
            assert state is not None  # noqa: S101 - due_full covers a missing state
            assert state.watermark is not None  # noqa: S101 - ditto for a missing watermark
            since = state.watermark - WATERMARK_OVERLAP
            plans.append(_Plan(resource_type, type_plan, "incremental", since, state))
    return plans, waiting


#: Which of several stops of one run is reported (lower first).
_STOP_RANK = {"misbound": 0, "reauth": 1}


async def _run_types(
    ctx: SyncContext,
    client: GrantClient,
    connection: Connection,
    plans: Sequence[_Plan],
    *,
    fingerprint: str,
    summary: RunSummary,
    on_type: Callable[[TypeResult], None] | None,
) -> None:
    """Pull the plans' types, :data:`TYPES_AT_ONCE` at a time; ``summary`` lists them in order.

    A failure that ends the run lets the types already running finish, starts no more, and is
    raised once they have (as is any other exception: no type is left running). The others wait
    until the first type has had a successful answer (or has ended): a token the EHR refuses,
    as belonging to another tenant say, is sent once rather than once per type.
    """
    room = asyncio.Semaphore(TYPES_AT_ONCE)
    stops: list[_StopRun] = []
    failures: list[Exception] = []

    async def one(index: int, plan: _Plan) -> None:
        if index:
            await client.answered.wait()
        try:
            await _run_one(plan)
        finally:
            if not index:
                client.answered.set()  # however the first ended, the others may go

    async def _run_one(plan: _Plan) -> None:
        async with room:
            if stops or failures:
                return
            try:
                result = await _run_type(
                    ctx, client, connection, plan, fingerprint=fingerprint, summary=summary
                )
            except _StopRun as stop:
                stop.resource_type = plan.resource_type
                stops.append(stop)
                return
            except Exception as exc:  # not the EHR's doing: the run ends, raised below
                failures.append(exc)
                return
        summary.types[plan.resource_type] = result
        summary.counts.add(result.counts)
        if on_type is not None:
            on_type(result)

    outcomes = await asyncio.gather(
        *(one(index, plan) for index, plan in enumerate(plans)), return_exceptions=True
    )
    order = {plan.resource_type: index for index, plan in enumerate(plans)}
    summary.types = dict(sorted(summary.types.items(), key=lambda item: order[item[0]]))
    for outcome in outcomes:
        if isinstance(outcome, BaseException):  # cancelled, or from a progress callback
            raise outcome
    for extra in failures[1:]:
        log.error("pull_type_failed", connection_id=connection.id, error=type(extra).__name__)
    if failures:
        raise failures[0]
    if stops:
        # The widest-reaching wins: a misbound token must not be reported as a mere 503.
        raise min(stops, key=lambda stop: _STOP_RANK.get(stop.outcome, len(_STOP_RANK)))


async def _run_type(
    ctx: SyncContext,
    client: GrantClient,
    connection: Connection,
    plan: _Plan,
    *,
    fingerprint: str,
    summary: RunSummary,
) -> TypeResult:
    resource_type = plan.resource_type
    state = plan.state
    if state is not None and state.status == "denied" and state.grant_fingerprint == fingerprint:
        # Denied for this very grant before: asking again would be refused again.
        return TypeResult(
            resource_type,
            "skipped",
            "none",
            error_class=state.error_class,
            error_message=state.error_message,
        )
    result = TypeResult(resource_type, "ok", plan.mode)
    attempt_at = ctx.now()
    try:
        pages = await _fetch_and_store(ctx, client, connection, plan, result)
    except _TypeFailed as failure:
        failed_at = ctx.now()
        error_class, message = failure.error_class, failure.message
        schedule: dict[str, Any] = {
            "next_attempt_at": None,
            "failure_count": 0,
            "failing_since": None,
        }
        status = failure.status
        if status == "transient_error":
            # Retried on its own back-off; ``failing`` once it has failed long enough.
            after = after_failure(
                state, attempt_at=attempt_at, now=failed_at, retry_after=failure.retry_after
            )
            status = "failing" if after.status == "failing" else "transient_error"
            result.next_attempt_at = after.next_attempt_at
            schedule = {
                "next_attempt_at": after.next_attempt_at,
                "failure_count": after.failure_count,
                "failing_since": after.failing_since,
            }
        result.status = status
        result.error_class = error_class
        result.error_message = message

        async def record_failure(session: AsyncSession) -> None:
            await resource_repo.save_sync_state(
                session,
                connection.id,
                resource_type,
                now=failed_at,
                status=status,
                error_class=error_class,
                error_message=message,
                grant_fingerprint=fingerprint if status == "denied" else None,
                last_attempt_at=attempt_at,
                **schedule,
                **result.counts.columns(),
            )

        await ctx.pages.run(connection.id, record_failure)
        return result
    except _StopRun:
        summary.types[resource_type] = dataclasses.replace(result, status="incomplete")
        summary.counts.add(result.counts)
        raise
    now = ctx.now()

    async def record_success(session: AsyncSession) -> int:
        # The unit may run again if its group fails, so it returns what it did, never adds.
        vanished = 0
        # A type stored for the first time has only what this run stored: nothing can vanish.
        if plan.mode == "full" and not pages.first_time:
            vanished = await pages.flag_vanished(session, now=now)
        counts = dataclasses.replace(result.counts, deleted=result.counts.deleted + vanished)
        previous = state.watermark if state is not None else None
        watermark = max(filter(None, (previous, pages.newest)), default=None)
        fields: dict[str, Any] = {
            "status": "ok",
            "watermark": watermark,
            "error_class": None,
            "error_message": None,
            "grant_fingerprint": None,
            "next_attempt_at": None,
            "failure_count": 0,
            "failing_since": None,
            "last_attempt_at": attempt_at,
            "last_success_at": now,
            **counts.columns(),
        }
        if plan.mode == "full":
            fields["last_full_at"] = attempt_at
        await resource_repo.save_sync_state(
            session, connection.id, resource_type, now=now, **fields
        )
        return vanished

    vanished = await ctx.pages.run(connection.id, record_success)
    result.counts.deleted += vanished
    _meter(client, Counts(deleted=vanished))
    return result


def _meter(client: GrantClient, counts: Counts) -> None:
    """Count committed resources in the tenant's metrics (when the run is metered)."""
    if client.tenant_meter is not None:
        client.tenant_meter.resources(**counts.as_dict())


async def _fetch_and_store(
    ctx: SyncContext,
    client: GrantClient,
    connection: Connection,
    plan: _Plan,
    result: TypeResult,
) -> TypePages:
    """Fetch every page of one type and put each into the page pipeline; returns its pages.

    The pages' counts and rejected ids are added to ``result`` as they are committed.
    """
    pages = await ctx.pages.open(
        connection.id,
        plan.resource_type,
        patient_id=connection.patient_id,
        base=connection.fhir_base,
        max_entries=client.limits.max_entries,
        counts=result.counts,
        rejected=result.rejected,
        meter=lambda counts: _meter(client, counts),
    )
    try:
        try:
            if plan.resource_type == "Patient":
                # The Patient is read by id: a search would need a parameter vendors spell apart.
                resource = await client.read("Patient", connection.patient_id)
                await pages.put_resources([resource])
            else:
                for params in plan.type_plan.searches(connection.patient_id):
                    if plan.since is not None:
                        params["_lastUpdated"] = f"gt{_instant(plan.since)}"
                    async for page in client.search(plan.resource_type, params, pages.decode):
                        await pages.put(page.prepared)
        finally:
            # Stored pages are kept (and counted) whatever ended the fetching.
            await pages.drain()
    except SyncsvcError as exc:
        raise _failure(exc) from exc
    return pages


#: Transient reasons of syncsvc's own making, which end the whole run rather than count against
#: a type: another writer stored this connection's resources (its lease was lost), or a
#: page-decoding process died.
_RUN_TRANSIENTS = frozenset({"concurrent_write", "lost_lease", "decoder_failed"})


def _failure(exc: SyncsvcError) -> _TypeFailed | _StopRun:
    """What a failure while fetching or storing a type ends: the type, or the whole run."""
    if isinstance(exc, TokenUnavailable):
        # No token to send: nothing of the connection can be pulled now.
        exc = exc.cause
    elif isinstance(exc, FhirRequestError):
        return _classify(exc)
    elif isinstance(exc, ForeignNextLink | PagingLoop | PageTooLarge):
        return _TypeFailed("error", exc.reason, exc.message)
    elif isinstance(exc, RequestTransient) and exc.reason == "unreachable":
        # No connection to the base at all: the whole EHR is down, not one search.
        return _StopRun("transient", exc.reason, exc.message)
    elif isinstance(exc, Transient) and exc.reason not in _RUN_TRANSIENTS:
        # A timeout, a reset or a malformed answer on one type's request, after its retries.
        return _TypeFailed("transient_error", exc.reason, exc.message, exc.retry_after)
    if isinstance(exc, Transient):
        return _StopRun("transient", exc.reason, exc.message, exc.retry_after)
    if isinstance(exc, ReauthRequired):
        return _StopRun("reauth", exc.reason, exc.message)
    if isinstance(exc, Misbound):
        return _StopRun("misbound", exc.reason, exc.message)
    # Anything else the token source raises (a lost refresh race, say): try again later.
    return _StopRun("transient", exc.reason, exc.message)


def _classify(exc: FhirRequestError) -> _TypeFailed | _StopRun:
    failure = exc.failure
    if failure.kind == "insufficient_scope":
        return _TypeFailed("denied", failure.kind, failure.detail)
    if failure.kind == "tenant_mismatch":
        return _StopRun("misbound", failure.kind, failure.detail)
    if failure.kind == "upstream_5xx" or failure.status == 408:
        # One search broken (a Condition search answering 503 for one record, say): that type
        # waits for its own retry; the rest of the record goes on.
        return _TypeFailed("transient_error", failure.kind, failure.detail, failure.retry_after)
    if failure.kind in _TYPE_ERRORS:
        return _TypeFailed("error", failure.kind, failure.detail)
    # throttled (the tenant wants every connection to wait), and an invalid_token that a fresh
    # token did not cure.
    return _StopRun("transient", failure.kind, failure.detail, failure.retry_after)


async def _finish(ctx: SyncContext, summary: RunSummary) -> None:
    assert summary.run_id is not None  # noqa: S101 - only started runs are finished
    run_id = summary.run_id

    async def record(session: AsyncSession) -> None:
        await resource_repo.finish_run(
            session,
            run_id,
            finished_at=summary.finished_at,
            outcome=summary.outcome,
            type_results={name: r.report() for name, r in summary.types.items()},
            error_class=summary.error_class,
            error_message=summary.error_message,
            bytes_received=summary.bytes_received,
            requests=summary.requests,
            retries=sum(summary.retries.values()),
            **summary.counts.columns(),
        )
        await resource_repo.stamp_connection_sync(
            session, summary.connection_id, now=summary.finished_at, success=summary.succeeded
        )

    await ctx.pages.run(summary.connection_id, record, beside_pages=True)
    log.info(
        "sync run",
        connection_id=summary.connection_id,
        run_id=summary.run_id,
        outcome=summary.outcome,
        error_class=summary.error_class,
        requests=summary.requests,
        retries=summary.retries or None,
        bytes=summary.bytes_received,
        seconds=round((summary.finished_at - summary.started_at).total_seconds(), 3),
        **summary.counts.as_dict(),
    )
