"""Turning what one connection's run did into ``events`` rows (tenant health and metrics).

A run is the refreshes and the pull the runner did for one leased connection. It becomes one
``ok`` event per kind when everything went well, and otherwise one event per failing resource
type or failure class, each with an error class from the health vocabulary
(:data:`syncsvc.vocabulary.HEALTH_CLASSES`). Events are written in the transaction that closes
the run, so recording them costs no round trip of its own.

Refreshes and pulls report failures as reasons: FHIR failure kinds and health classes of
:mod:`syncsvc.vocabulary`, the reason codes of :mod:`syncsvc.errors`, and for transport trouble
only a message; :func:`health_class` says which health class each counts under. Nothing here
records a token, a body or a patient identifier.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db.event_repo import add_events, event_row
from syncsvc.sync.refresh_outcomes import RefreshResult
from syncsvc.sync.run_records import RunSummary
from syncsvc.vocabulary import (
    FAILED_TYPE_RUN_STATUSES,
    HEALTH_CLASSES,
    OFFLINE_ACCESS_NOT_GRANTED,
    REFUSAL_KINDS,
    STOPPED_RUN_OUTCOMES,
)

#: Message fragments of transport-level ``Transient`` errors, which carry no reason code of
#: their own (``syncsvc.fhir.client`` and ``syncsvc.smart.oauth`` word them): first match wins.
_MESSAGE_TO_CLASS: tuple[tuple[str, str], ...] = (
    ("throttl", "throttled"),
    ("HTTP 429", "throttled"),
    ("TimeoutError", "timeout"),
    ("timed out", "timeout"),
    ("could not be reached", "network"),
    ("HTTP 5", "upstream_5xx"),
    ("malformed", "malformed"),
    ("oversized", "malformed"),
    ("something other than", "malformed"),
    ("something else", "malformed"),
    ("token response", "malformed"),
    ("without an OAuth error", "malformed"),
    ("not a list", "malformed"),
)

#: Reasons that say syncsvc itself stood aside (another worker holds the connection, or our
#: own back-off withheld a token): no event.
#: ``disconnected``: the patient or an operator disconnected while the run was writing.
_NOT_THE_EHR = frozenset({"lost_lease", "conflict", "backing_off", "disconnected"})


def health_class(reason: str | None, message: str | None = None) -> str | None:
    """The health-vocabulary class of a failure with this reason code and message.

    Any reason that stops refreshing for good is ``invalid_grant``; reasons that say syncsvc
    stood aside map to None (no event).
    """
    if reason in _NOT_THE_EHR:
        return None
    if reason in HEALTH_CLASSES:
        return reason
    # A 401 invalid_token that a fresh token did not cure: refused, though the grant stands.
    if reason in REFUSAL_KINDS or reason == "invalid_token":
        return "refused"
    if reason == "page_too_large":
        # A page over the tenant's size or entry cap: an answer syncsvc cannot use.
        return "malformed"
    if reason == "misbound":
        return "tenant_mismatch"
    text = message or ""
    for fragment, name in _MESSAGE_TO_CLASS:
        if fragment in text:
            return name
    return "network" if reason in (None, "transient") else "refused"


@dataclass(frozen=True)
class EventRecord:
    """One row for ``events``, before it is written."""

    kind: str
    outcome: str
    error_class: str | None = None
    resource_type: str | None = None
    detail: str | None = None
    count: int = 1


@dataclass
class ConnectionRun:
    """What the runner did for one connection: its refreshes and its pull, if any."""

    tenant_id: str
    connection_id: str
    refreshes: list[RefreshResult] = field(default_factory=list)
    summary: RunSummary | None = None

    def events(self) -> list[EventRecord]:
        """The events this run stands for (none when nothing reached the EHR)."""
        return [*self._refresh_events(), *self._sync_events()]

    def _refresh_events(self) -> Iterator[EventRecord]:
        for result in self.refreshes:
            if result.outcome == "refreshed":
                yield EventRecord("refresh", "ok")
            elif result.outcome == "misbound":
                yield EventRecord(
                    "refresh",
                    "misbound",
                    health_class(result.reason) or "tenant_mismatch",
                    detail="The refresh answer named another tenant or patient.",
                )
            elif result.outcome == "needs_reauth" and result.reason == OFFLINE_ACCESS_NOT_GRANTED:
                # Not a refusal, and not the EHR turning the grant down: it never included
                # offline access, and its one access token ran out.
                yield EventRecord(
                    "refresh", "needs_reauth", OFFLINE_ACCESS_NOT_GRANTED, detail=result.reason
                )
            elif result.outcome == "needs_reauth" and result.reason is not None:
                # Every reason to reconnect counts as invalid_grant for health; the precise
                # reason (invalid_client, empty_scopes, ...) stays in the detail.
                yield EventRecord("refresh", "needs_reauth", "invalid_grant", detail=result.reason)
            elif result.outcome == "transient" and result.reason is not None:
                # A transient result without a reason made no EHR call (backing off, throttled
                # by our own minimum interval).
                error_class = health_class(result.reason, result.message)
                if error_class is not None:
                    yield EventRecord("refresh", "transient", error_class, detail=result.message)

    def _sync_events(self) -> Iterator[EventRecord]:
        summary = self.summary
        if summary is None or summary.outcome == "inactive":
            return
        failed = False
        for name, result in summary.types.items():
            if result.counts.rejected:
                failed = True
                yield EventRecord(
                    "sync",
                    "rejected",
                    "compartment_violation",
                    resource_type=name,
                    detail="Resources outside the patient's compartment were refused.",
                    count=result.counts.rejected,
                )
            if result.status in FAILED_TYPE_RUN_STATUSES:
                failed = True
                yield EventRecord(
                    "sync",
                    result.status,
                    health_class(result.error_class, result.error_message) or "refused",
                    resource_type=name,
                    # Not the EHR's own text: an OperationOutcome may name the patient.
                    detail=f"The EHR's answer for {name} ended that type ({result.status}).",
                )
        if summary.outcome in STOPPED_RUN_OUTCOMES:
            error_class = health_class(summary.error_class, summary.error_message)
            if summary.outcome == "reauth":
                error_class = "invalid_grant"
            if error_class is not None:
                failed = True
                yield EventRecord(
                    "sync",
                    summary.outcome,
                    error_class,
                    resource_type=_stopped_type(summary),
                    detail=f"The run ended {summary.outcome} ({error_class}).",
                )
            else:
                # Stood aside (the lease moved on): not a failure of the EHR, not a success.
                failed = True
        if not failed:
            yield EventRecord("sync", "ok")


def _stopped_type(summary: RunSummary) -> str | None:
    """The type a run-ending failure happened on, if any.

    Types are pulled side by side, so more than one may be left ``incomplete``; the pull names
    the one whose failure it reports.
    """
    if summary.stopped_type is not None:
        return summary.stopped_type
    return next((name for name, r in summary.types.items() if r.status == "incomplete"), None)


async def record_run(session: AsyncSession, run: ConnectionRun, *, at: dt.datetime) -> int:
    """Add ``run``'s events to the caller's transaction; returns how many were added."""
    records = run.events()
    await add_events(
        session,
        [
            event_row(
                tenant_id=run.tenant_id,
                connection_id=run.connection_id,
                kind=record.kind,
                outcome=record.outcome,
                at=at,
                error_class=record.error_class,
                resource_type=record.resource_type,
                detail=record.detail,
                count=record.count,
            )
            for record in records
        ],
    )
    return len(records)
