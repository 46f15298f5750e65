"""What a pull run leaves behind: its ``sync_runs`` row, each type's ``sync_states``, a summary.

:class:`TypeResult` and :class:`RunSummary` are what the runner, the CLI and the events see of a
run. The functions here are the run's units of work: each is handed to the page pipeline
(:meth:`syncsvc.sync.pipeline.sink.PageSink.run`) so it is written in order with the
connection's pages, and none of them commits.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import repo, run_repo
from syncsvc.db.models.connections import Connection, Tenant
from syncsvc.db.models.records import SyncState
from syncsvc.errors import NotFound
from syncsvc.fhir.grant_parts import in_parts
from syncsvc.sync.connection_read import ConnectionRead
from syncsvc.sync.grant_states import readable_types
from syncsvc.sync.pipeline.sink import TypePages
from syncsvc.sync.pipeline.store import Counts
from syncsvc.sync.pull_plan import Mode, PlannedType
from syncsvc.sync.references import ReferenceResult
from syncsvc.sync.type_schedule import RETRYING
from syncsvc.sync.type_support import record_unsearchable, record_unsupported
from syncsvc.vocabulary import (
    NO_READABLE_TYPE,
    SUCCESSFUL_RUN_OUTCOMES,
    SYNCING_STATUSES,
    PullOutcome,
    TypeRunStatus,
)

log = structlog.get_logger("syncsvc.sync.pull")


@dataclass
class TypeResult:
    """How one resource type fared in a run."""

    resource_type: str
    status: TypeRunStatus
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
    outcome: PullOutcome
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
    #: What the run did with the record's references to shared resources, once resolved.
    references: ReferenceResult | None = None
    #: What the run did with documents' attachments (None: it pulled no documents or reports).
    attachments: dict[str, int] | None = None
    #: The grant the run planned with (None: no run began): a refresh during the run that
    #: widened it leaves the connection due at once, for what the run did not pull.
    granted_scopes: tuple[str, ...] | None = None

    @property
    def succeeded(self) -> bool:
        """Whether the run got through every type it could (some may be denied or in error)."""
        return self.outcome in SUCCESSFUL_RUN_OUTCOMES

    def next_due(self, waiting: Mapping[str, dt.datetime], interval: dt.timedelta) -> dt.datetime:
        """The soonest time one of the connection's types is due again after this run."""
        due = [*waiting.values(), self.finished_at + interval]
        due.extend(
            r.next_attempt_at
            for r in self.types.values()
            if r.status in RETRYING and r.next_attempt_at is not None
        )
        return min(due)


async def start_run(
    session: AsyncSession,
    connection_id: str,
    *,
    run_id: str,
    owner: str,
    full: bool,
    now: dt.datetime,
    read: ConnectionRead | None = None,
) -> tuple[Connection, Tenant, dict[str, SyncState]] | None:
    """Open a run record; the connection, its tenant and its types' states, or None.

    None when the connection is not syncing, or (made ``no_access`` here) when its grant lets
    syncsvc read no type of its tenant's any more. ``read``: see :class:`ConnectionRead`.
    """
    if read is not None and read.connection.id == connection_id:
        connection, tenant = read.connection, read.tenant
    else:
        found = await repo.get_connection_with(session, connection_id)
        if found is None:
            raise NotFound("No such connection.")
        connection, tenant, _ = found
    if connection.status not in SYNCING_STATUSES:
        return None
    if not readable_types(connection.granted_scopes, tenant):
        if read is not None:
            # A status is about to be set: decided on the connection as it is now.
            return await start_run(
                session, connection_id, run_id=run_id, owner=owner, full=full, now=now
            )
        # The tenant's types changed under the grant: a run would read nothing and call
        # that ``ok``. The connection says what it is instead.
        await repo.set_connection_status(
            session, connection_id, status="no_access", now=now, reason=NO_READABLE_TYPE
        )
        return None
    if not await run_repo.start_run(
        session, run_id=run_id, connection_id=connection_id, owner=owner, full=full, now=now
    ):
        # Ended (disconnected, say) since ``read`` was read: nothing of it is written.
        return None
    states = await run_repo.sync_states(session, connection_id)
    # The server's offer may have changed since the last run (a fresh discovery document).
    if await record_unsupported(session, connection_id, tenant, states, now=now):
        states = await run_repo.sync_states(session, connection_id)
    # And the vendor's plan may search a part it could not (or no longer one it could).
    if await record_unsearchable(
        session, connection_id, tenant, connection.granted_scopes, states, now=now
    ):
        states = await run_repo.sync_states(session, connection_id)
    return connection, tenant, states


async def save_type_failure(
    session: AsyncSession,
    connection_id: str,
    result: TypeResult,
    *,
    fingerprint: str,
    attempt_at: dt.datetime,
    now: dt.datetime,
    schedule: Mapping[str, Any],
) -> None:
    """Store a failed type's state: its error, its retry ``schedule`` and what it stored."""
    status = result.status
    await run_repo.save_sync_state(
        session,
        connection_id,
        result.resource_type,
        now=now,
        status=status,
        error_class=result.error_class,
        error_message=result.error_message,
        grant_fingerprint=fingerprint if status == "denied" else None,
        last_attempt_at=attempt_at,
        **schedule,
        **result.counts.columns(),
    )


def reconciles(planned: PlannedType, pages: TypePages) -> bool:
    """Whether a completed type is checked for resources that vanished upstream.

    Only a full pull sees everything of the type; a type stored for the first time has only
    what this run stored, so nothing of it can have vanished.
    """
    return planned.mode == "full" and not pages.first_time


async def save_type_success(
    session: AsyncSession,
    planned: PlannedType,
    pages: TypePages,
    counts: Counts,
    *,
    attempt_at: dt.datetime,
    now: dt.datetime,
    live: Mapping[str, set[str]] | None = None,
    states: run_repo.StateBatch | None = None,
) -> int:
    """Store a completed type's state and move its watermark; returns the resources vanished.

    The unit may run again if its group fails, so it returns what it did, never adds.
    ``live``: the stored live ids by type, read by the caller for the types
    :func:`reconciles` says (in this transaction). ``states``: the state is held there for
    the caller to write with the others of its transaction, instead of written now.
    """
    vanished = 0
    if reconciles(planned, pages):
        # Under a grant of some parts only, what was stored of the other parts (granted before)
        # was not searched: it is kept, not taken for vanished.
        parts = planned.parts
        within = None if parts is None else functools.partial(in_parts, parts=parts)
        known = None if live is None else live.get(planned.resource_type)
        vanished = await pages.flag_vanished(session, now=now, within=within, live=known)
    counts = dataclasses.replace(counts, deleted=counts.deleted + vanished)
    state = planned.state
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
        "granted_parts": planned.part_texts,
        # The granted parts the vendor cannot search: said on every surface, never "not yet".
        "unsearchable_parts": planned.unsearchable_texts or None,
        **counts.columns(),
    }
    if planned.mode == "full":
        fields["last_full_at"] = attempt_at
    if states is not None:
        states.add(pages.connection_id, planned.resource_type, now=now, **fields)
    else:
        await run_repo.save_sync_state(
            session, pages.connection_id, planned.resource_type, now=now, **fields
        )
    return vanished


async def finish_run(session: AsyncSession, summary: RunSummary, *, stamp: bool = True) -> None:
    """Close the run record and (``stamp``) stamp the connection's last sync."""
    assert summary.run_id is not None  # noqa: S101 - only started runs are finished
    await run_repo.finish_run(
        session,
        summary.run_id,
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
    if stamp:
        await run_repo.stamp_connection_sync(
            session, summary.connection_id, now=summary.finished_at, success=summary.succeeded
        )


def log_run(summary: RunSummary) -> None:
    """The run's one summary line."""
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
        attachments=summary.attachments,
    )
