"""Pulling one connection's record: every granted type, paged, incremental where possible.

:func:`pull_connection` opens a run record and hands the run to a :class:`PullRun`, which pulls
the planned types (:mod:`syncsvc.sync.pull_plan`) side by side (:data:`TYPES_AT_ONCE` at a time,
the others once the EHR has answered the first type with success). Each type's pages go to the
page pipeline (:class:`syncsvc.sync.pipeline.sink.PageSink`) as they arrive; they are committed
in short transactions (never one held across an HTTP call). A type's watermark moves only when
the type completed, so a crash or a transient failure makes the next run redo that type
idempotently (unchanged resources are compared, not rewritten). Every run leaves a
``sync_runs`` row and per-type ``sync_states`` (:mod:`syncsvc.sync.run_records`); unless someone
watches the types one by one, the completed types' states are written together in one
transaction once every type has ended.

Once the types are pulled, the shared resources the record references (Practitioner,
Organization, Location ...) are read under the same base (:mod:`syncsvc.sync.references`).

Requests are retried in place first (:mod:`syncsvc.sync.grant_client`: 502/503/504, 429, 408,
timeouts, resets). What still fails is sorted by how far it reaches
(:mod:`syncsvc.sync.pull_failures`):

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
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import repo, resource_repo, run_repo
from syncsvc.db.columns import new_id
from syncsvc.db.models.connections import Connection, Tenant
from syncsvc.db.models.records import SyncState
from syncsvc.errors import SyncsvcError, Transient, VaultError
from syncsvc.fhir.plans import plan_for
from syncsvc.fhir.references import REFERENCED_TYPES
from syncsvc.sync import everything
from syncsvc.sync.attachments import AttachmentStage
from syncsvc.sync.connection_read import ConnectionRead
from syncsvc.sync.context import SyncContext
from syncsvc.sync.credentials import load_tokens
from syncsvc.sync.grant_client import AccessTokens, GrantClient
from syncsvc.sync.misbound import (
    ATTEMPT_TIMEOUT_SECONDS,
    TENANT_MISMATCH,
    GrantToEnd,
    end_misbound,
    revoke_now,
)
from syncsvc.sync.pipeline.sink import TypePages
from syncsvc.sync.pipeline.store import Counts
from syncsvc.sync.pull_failures import StopRun, TypeFailed, failure_of, widest
from syncsvc.sync.pull_plan import PlannedType, grant_fingerprint, plan_run
from syncsvc.sync.references import ReferenceResolver, log_references
from syncsvc.sync.run_records import (
    RunSummary,
    TypeResult,
    finish_run,
    log_run,
    reconciles,
    save_type_failure,
    save_type_success,
    start_run,
)
from syncsvc.sync.tenant_config import smart_configuration
from syncsvc.sync.type_schedule import RETRYING, after_failure
from syncsvc.vocabulary import ATTACHMENT_ELEMENTS, FAILED_TYPE_RUN_STATUSES

log = structlog.get_logger("syncsvc.sync.pull")


#: Resource types of one connection pulled at once. A type begins and ends with waits (its
#: first answer, its last commits), and a patient has a dozen types, most of them a page or two:
#: one after another, those waits add up (a quarter of a bench round with just two types). The
#: tenant's limits still bound requests.
TYPES_AT_ONCE = 3


async def pull_connection(
    ctx: SyncContext,
    connection_id: str,
    token_source: AccessTokens,
    *,
    full: bool = False,
    types: Sequence[str] | None = None,
    on_type: Callable[[TypeResult], None] | None = None,
    caller_closes: bool = False,
    read: ConnectionRead | None = None,
) -> RunSummary:
    """Pull a connection's granted resource types and store them; never raises for EHR failures.

    ``full`` forces a full pull (and vanished-resource reconciliation) of every type; ``types``
    narrows the run to those types (still only where the grant covers them); ``on_type`` hears
    about each type as it finishes (progress for a person watching a long pull).

    ``caller_closes``: the run record's end, the connection's ``last_sync_at`` and
    ``last_success_at``, are left to the caller's closing write (the runner's, which updates
    the connection anyway), which calls :func:`close_run` in its transaction and
    :func:`announce_run` after it. ``read``: the connection and tenant as the caller has just
    read or written them (a refresh right before), so the run does not read them again.
    """
    started = ctx.now()
    run_id = new_id()
    begin = functools.partial(
        start_run,
        connection_id=connection_id,
        run_id=run_id,
        owner=ctx.owner,
        full=full,
        now=started,
        read=read,
    )
    begun = await ctx.pages.run(connection_id, begin, beside_pages=True)
    if begun is None:
        return RunSummary(connection_id, "inactive", started, started)
    connection, tenant, states = begun
    summary = RunSummary(
        connection_id,
        "ok",
        started,
        started,
        run_id=run_id,
        full=full,
        granted_scopes=tuple(connection.granted_scopes),
    )
    run = PullRun(
        ctx,
        connection,
        tenant,
        states,
        token_source=token_source,
        summary=summary,
        types=types,
        on_type=on_type,
        caller_closes=caller_closes,
    )
    return await run.pull()


async def close_run(session: AsyncSession, summary: RunSummary) -> None:
    """End the run record of a pull made with ``caller_closes`` (in the caller's transaction)."""
    if summary.run_id is not None:
        await finish_run(session, summary, stamp=False)


def announce_run(ctx: SyncContext, tenant: str, summary: RunSummary) -> None:
    """The run's log line and metric, once its record is committed (so the two agree)."""
    if summary.run_id is None:
        return
    log_run(summary)
    ctx.metrics.tenant(tenant).run(summary.outcome)


class PullRun:
    """One started run of a connection's pull: its plan, its client, and what it has done.

    Made by :func:`pull_connection` once the run record exists; :meth:`pull` runs it to the
    end and closes the record.
    """

    def __init__(
        self,
        ctx: SyncContext,
        connection: Connection,
        tenant: Tenant,
        states: dict[str, SyncState],
        *,
        token_source: AccessTokens,
        summary: RunSummary,
        types: Sequence[str] | None = None,
        on_type: Callable[[TypeResult], None] | None = None,
        caller_closes: bool = False,
    ) -> None:
        self.ctx = ctx
        self._caller_closes = caller_closes
        self.connection = connection
        self.tenant = tenant
        self.summary = summary
        self._on_type = on_type
        vendor_plan = plan_for(tenant.vendor, tenant.plan_overrides)
        self.vendor_plan = vendor_plan
        self.client = GrantClient(
            ctx.http,
            connection.fhir_base,
            token_source,
            meter=ctx.metrics.tenant(tenant.name),
            limits=ctx.page_limits(vendor_plan.max_page_bytes, vendor_plan.max_page_entries),
            budget=ctx.page_budget,
            # A type already failing is tried once, on its own schedule: no waits in place.
            fail_fast={name for name, state in states.items() if state.status in RETRYING},
        )
        self.fingerprint = grant_fingerprint(connection.granted_scopes)
        self.interval = dt.timedelta(seconds=ctx.settings.sync_interval_seconds)
        self.plan = plan_run(
            connection,
            tenant,
            vendor_plan,
            states,
            full=summary.full,
            types=types,
            now=summary.started_at,
            interval=self.interval,
        )
        self._types = types
        self._room = asyncio.Semaphore(TYPES_AT_ONCE)
        #: Run-ending failures, and failures not of the EHR's doing, of the types pulled so far.
        self._stops: list[StopRun] = []
        self._failures: list[Exception] = []
        #: Completed types whose states are still to be written, with their results.
        self._completed: list[tuple[Callable[..., Awaitable[int]], TypeResult, bool]] = []

    async def pull(self) -> RunSummary:
        """Pull the planned types, close the run record, and say what the run did."""
        summary, client = self.summary, self.client
        try:
            await self._stages()
        except StopRun as stop:
            summary.outcome = stop.outcome
            summary.stopped_type = stop.resource_type
            summary.error_class = stop.error_class
            summary.error_message = stop.message
            summary.retry_after = stop.retry_after
            if stop.outcome == "misbound":
                await self._end_misbound()
        else:
            if any(r.status in FAILED_TYPE_RUN_STATUSES for r in summary.types.values()):
                summary.outcome = "partial"
        summary.requests = client.requests
        summary.bytes_received = client.bytes_received
        summary.forced_refreshes = client.forced_refreshes
        summary.retries = dict(client.retries)
        summary.finished_at = self.ctx.now()
        summary.next_due_at = summary.next_due(self.plan.waiting, self.interval)
        if self._caller_closes:
            return summary
        await self.ctx.pages.run(
            summary.connection_id, functools.partial(finish_run, summary=summary), beside_pages=True
        )
        announce_run(self.ctx, self.tenant.name, summary)
        return summary

    async def _stages(self) -> None:
        """The types, then their references and attachments. A write refused at any of them
        (the connection disconnected meanwhile) ends the run as a :class:`StopRun`."""
        try:
            await self._pull_types()
            await self._resolve_references()
            await self._pull_attachments()
        except Transient as exc:
            failure = failure_of(exc)
            if not isinstance(failure, StopRun):
                raise
            raise failure from exc

    async def _pull_attachments(self) -> None:
        """Fetch the attachments of the documents and reports this run pulled, if any.

        Never fails the run: each attachment records its own outcome
        (:mod:`syncsvc.sync.attachments`).
        """
        if not any(p.resource_type in ATTACHMENT_ELEMENTS for p in self.plan.types):
            return
        stage = AttachmentStage(self.ctx, self.connection, self.client, now=self.ctx.now())
        counts = await stage.run()
        self.summary.attachments = counts.as_dict()

    async def _pull_types(self) -> None:
        """Pull the planned types, :data:`TYPES_AT_ONCE` at a time; the summary lists them in order.

        A failure that ends the run lets the types already running finish, starts no more, and
        is raised once they have (as is any other exception: no type is left running). The others
        wait until the first type has had a successful answer (or has ended): a token the EHR
        refuses, as belonging to another tenant say, is sent once rather than once per type.
        """
        planned = self.plan.types
        if everything.usable(self.vendor_plan, smart_configuration(self.tenant), planned):
            planned = await self._pull_everything(planned)
        outcomes = await asyncio.gather(
            *(self._pull_in_turn(index, one) for index, one in enumerate(planned)),
            return_exceptions=True,
        )
        # Whatever ended the run, the types that completed keep what they did.
        await self._save_completed()
        order = {one.resource_type: index for index, one in enumerate(self.plan.types)}
        types = self.summary.types
        self.summary.types = dict(sorted(types.items(), key=lambda item: order[item[0]]))
        for outcome in outcomes:
            if isinstance(outcome, BaseException):  # cancelled, or from a progress callback
                raise outcome
        for extra in self._failures[1:]:
            log.error(
                "pull_type_failed", connection_id=self.connection.id, error=type(extra).__name__
            )
        if self._failures:
            raise self._failures[0]
        if self._stops:
            # The widest-reaching wins: a misbound token must not be reported as a mere 503.
            raise widest(self._stops)

    async def _pull_everything(self, planned: list[PlannedType]) -> list[PlannedType]:
        """Pull through ``Patient/$everything``; the types still to search on their own.

        A type it returned nothing of is searched as well (a server may leave a type out of
        the operation); if the operation fails, every type is searched (what it stored is kept,
        and counted as unchanged by the searches).
        """
        connection, client = self.connection, self.client
        results = {
            one.resource_type: TypeResult(one.resource_type, "ok", "full") for one in planned
        }
        sinks: dict[str, TypePages] = {}
        for name, result in results.items():
            sinks[name] = await self.ctx.pages.open(
                connection.id,
                name,
                patient_id=connection.patient_id,
                base=connection.fhir_base,
                max_entries=client.limits.max_entries,
                counts=result.counts,
                rejected=result.rejected,
                meter=self._meter,
            )
        attempt_at = self.ctx.now()
        count = {"_count": str(self.vendor_plan.default_count or 100)}
        try:
            try:
                async for page in client.search(
                    "Patient",
                    count,
                    everything.decoder(client.limits.max_entries),
                    path=f"Patient/{connection.patient_id}/$everything",
                ):
                    for name, resources in page.by_type.items():
                        if name in sinks:
                            await sinks[name].put_resources(resources)
            finally:
                for sink in sinks.values():
                    await sink.drain()
        except SyncsvcError as exc:
            failure = failure_of(exc)
            if isinstance(failure, StopRun):
                failure.resource_type = "Patient"
                raise failure from exc
            log.warning(
                "everything_fell_back",
                connection_id=connection.id,
                error_class=failure.error_class,
            )
            return planned
        remaining = []
        for one in planned:
            pages, result = sinks[one.resource_type], results[one.resource_type]
            if not pages.seen:
                remaining.append(one)
                continue
            save = functools.partial(
                save_type_success,
                planned=one,
                pages=pages,
                counts=result.counts,
                attempt_at=attempt_at,
                now=self.ctx.now(),
            )
            vanished = await self.ctx.pages.run(connection.id, save)
            result.counts.deleted += vanished
            self._meter(Counts(deleted=vanished))
            self.summary.types[one.resource_type] = result
            self.summary.counts.add(result.counts)
            if self._on_type is not None:
                self._on_type(result)
        return remaining

    async def _resolve_references(self) -> None:
        """Read the shared resources the record references (:mod:`syncsvc.sync.references`).

        A run narrowed to named types resolves them only when a shared type is named.
        """
        if self._types is not None and not set(self._types) & set(REFERENCED_TYPES):
            return
        resolver = ReferenceResolver(
            self.ctx,
            self.connection,
            self.client,
            smart_configuration(self.tenant),
            meter=self._meter,
        )
        result = await resolver.resolve()
        self.summary.references = result
        self.summary.counts.add(result.counts)
        log_references(self.connection.id, result)

    async def _pull_in_turn(self, index: int, planned: PlannedType) -> None:
        """Pull one type once the first has been answered (the first goes at once)."""
        if index:
            await self.client.answered.wait()
        try:
            await self._pull_in_room(planned)
        finally:
            if not index:
                self.client.answered.set()  # however the first ended, the others may go

    async def _pull_in_room(self, planned: PlannedType) -> None:
        """Pull one type when there is room, unless the run has already been stopped."""
        async with self._room:
            if self._stops or self._failures:
                return
            try:
                result = await self._pull_type(planned)
            except StopRun as stop:
                stop.resource_type = planned.resource_type
                self._stops.append(stop)
                return
            except Exception as exc:  # not the EHR's doing: the run ends, raised below
                self._failures.append(exc)
                return
        self.summary.types[planned.resource_type] = result
        self.summary.counts.add(result.counts)
        if self._on_type is not None:
            self._on_type(result)

    async def _pull_type(self, planned: PlannedType) -> TypeResult:
        """Pull one type and record how it fared (raises StopRun for a run-ending failure)."""
        state = planned.state
        if (
            state is not None
            and state.status == "denied"
            and state.grant_fingerprint == self.fingerprint
        ):
            # Denied for this very grant before: asking again would be refused again.
            return TypeResult(
                planned.resource_type,
                "skipped",
                "none",
                error_class=state.error_class,
                error_message=state.error_message,
            )
        if planned.unsearchable:
            log.warning(
                "granted_parts_unsearchable",
                connection_id=self.connection.id,
                resource_type=planned.resource_type,
                parts=planned.unsearchable_texts,
            )
        result = TypeResult(planned.resource_type, "ok", planned.mode)
        attempt_at = self.ctx.now()
        try:
            pages = await self._fetch(planned, result)
        except TypeFailed as failure:
            await self._type_failed(planned, result, failure, attempt_at)
            return result
        except StopRun:
            self.summary.types[planned.resource_type] = dataclasses.replace(
                result, status="incomplete"
            )
            self.summary.counts.add(result.counts)
            raise
        now = self.ctx.now()
        save = functools.partial(
            save_type_success,
            planned=planned,
            pages=pages,
            counts=result.counts,
            attempt_at=attempt_at,
            now=now,
        )
        if self._on_type is None:
            # Nobody watches type by type: the types' states are written together once every
            # type has ended (:meth:`_save_completed`), one transaction rather than one each.
            self._completed.append((save, result, reconciles(planned, pages)))
            return result
        vanished = await self.ctx.pages.run(self.connection.id, save)
        result.counts.deleted += vanished
        self._meter(Counts(deleted=vanished))
        return result

    async def _save_completed(self) -> None:
        """Write the states of the types completed so far, in one transaction of the writer.

        A type's watermark moves only here, once its pages are committed; until then a crash
        leaves the type to be pulled again, as a failure would (unchanged resources are
        compared, not rewritten). Resources found vanished are counted in as a type's own.
        """
        completed, self._completed = self._completed, []
        if not completed:
            return

        checked = [result.resource_type for _, result, check in completed if check]

        async def save_all(session: AsyncSession) -> list[int]:
            # The unit runs again if its group fails, so it returns what it did, never adds.
            # The stored ids of every type checked for vanished resources, in one read.
            live = (
                await resource_repo.live_resource_ids_of_types(session, self.connection.id, checked)
                if checked
                else {}
            )
            states = run_repo.StateBatch()
            vanished = [await save(session, live=live, states=states) for save, _, _ in completed]
            await states.write(session)
            return vanished

        vanished = await self.ctx.pages.run(self.connection.id, save_all)
        for count, (_, result, _) in zip(vanished, completed, strict=True):
            if count:
                result.counts.deleted += count
                self.summary.counts.add(Counts(deleted=count))
                self._meter(Counts(deleted=count))

    async def _fetch(self, planned: PlannedType, result: TypeResult) -> TypePages:
        """Fetch every page of one type into the page pipeline; returns the type's pages.

        The pages' counts and rejected ids are added to ``result`` as they are committed.
        """
        connection, client = self.connection, self.client
        pages = await self.ctx.pages.open(
            connection.id,
            planned.resource_type,
            patient_id=connection.patient_id,
            base=connection.fhir_base,
            max_entries=client.limits.max_entries,
            counts=result.counts,
            rejected=result.rejected,
            meter=self._meter,
            synced_before=planned.state is not None and planned.state.last_success_at is not None,
        )
        try:
            try:
                if planned.resource_type == "Patient":
                    # The Patient is read by id: a search would need a parameter vendors spell
                    # apart.
                    resource = await client.read("Patient", connection.patient_id)
                    await pages.put_resources([resource])
                else:
                    for params in planned.searches(connection.patient_id):
                        async for page in client.search(
                            planned.resource_type, params, pages.decode
                        ):
                            await pages.put(page.prepared)
            finally:
                # Stored pages are kept (and counted) whatever ended the fetching.
                await pages.drain()
        except SyncsvcError as exc:
            raise failure_of(exc) from exc
        return pages

    async def _type_failed(
        self, planned: PlannedType, result: TypeResult, failure: TypeFailed, attempt_at: dt.datetime
    ) -> None:
        """Record a type's failure, with its own retry schedule when it may pass."""
        failed_at = self.ctx.now()
        schedule: dict[str, Any] = {
            "next_attempt_at": None,
            "failure_count": 0,
            "failing_since": None,
        }
        status = failure.status
        if status == "transient_error":
            # Retried on its own back-off; ``failing`` once it has failed long enough.
            after = after_failure(
                planned.state, attempt_at=attempt_at, now=failed_at, retry_after=failure.retry_after
            )
            status = "failing" if after.status == "failing" else "transient_error"
            result.next_attempt_at = after.next_attempt_at
            schedule = {
                "next_attempt_at": after.next_attempt_at,
                "failure_count": after.failure_count,
                "failing_since": after.failing_since,
            }
        result.status = status
        result.error_class = failure.error_class
        result.error_message = failure.message
        save = functools.partial(
            save_type_failure,
            connection_id=self.connection.id,
            result=result,
            fingerprint=self.fingerprint,
            attempt_at=attempt_at,
            now=failed_at,
            schedule=schedule,
        )
        await self.ctx.pages.run(self.connection.id, save)

    def _meter(self, counts: Counts) -> None:
        """Count committed resources in the tenant's metrics (when the run is metered)."""
        if self.client.tenant_meter is not None:
            self.client.tenant_meter.resources(**counts.as_dict())

    async def _end_misbound(self) -> None:
        """The FHIR server refused the token for this tenant: end the grant, keep the data."""
        ctx, connection = self.ctx, self.connection
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
                tenant=self.tenant,
                grant=None
                if tokens is None
                else GrantToEnd.of(tokens.refresh_token, tokens.access_token),
                reason=TENANT_MISMATCH,
                foreign=None,
                stage="run",
                now=ctx.now(),
            )
        await revoke_now(ctx, ended, timeout_seconds=ATTEMPT_TIMEOUT_SECONDS)
