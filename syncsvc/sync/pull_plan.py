"""Planning a run: which of a connection's types it pulls, and each in full or since when.

Only what the *granted* scopes cover is pulled, in the operator's order for the tenant. A run the
schedule made pulls the types that are due: a type waiting for its own retry
(:mod:`syncsvc.sync.type_schedule`) keeps waiting, and a run made due only by such a retry leaves
the types whose interval has not come round. A forced run, or one narrowed to named types, pulls
them whatever their schedule. A type is pulled incrementally (``_lastUpdated`` after its
watermark) where the vendor's plan and the server allow it, in full at least every
:data:`FULL_RECONCILIATION_INTERVAL`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from syncsvc.db.models.connections import Connection, Tenant
from syncsvc.db.models.records import SyncState
from syncsvc.fhir.grant_parts import within_grant
from syncsvc.fhir.plans import TypePlan, VendorPlan, supports_last_updated
from syncsvc.smart.scope_grammar import Part, TypeGrant, part_of_text, part_text
from syncsvc.smart.scopes import type_grants
from syncsvc.sync.tenant_config import smart_configuration
from syncsvc.sync.type_schedule import RETRYING, waiting_until
from syncsvc.sync.type_support import pullable_types

#: An incremental pull asks for ``_lastUpdated`` after the watermark minus this, so a resource
#: committed at the EHR with a timestamp just before an earlier pull's newest one is not missed.
WATERMARK_OVERLAP = dt.timedelta(minutes=5)
#: How often a type that could be pulled incrementally is pulled in full instead, to notice
#: resources that vanished upstream (searches do not return deletions).
FULL_RECONCILIATION_INTERVAL = dt.timedelta(days=7)

Mode = Literal["full", "incremental", "none"]


def grant_fingerprint(granted_scopes: Sequence[str]) -> str:
    """A digest of a grant's scopes: a denied type is retried once this changes."""
    joined = " ".join(sorted({scope.lower() for scope in granted_scopes}))
    return hashlib.sha256(joined.encode()).hexdigest()


def _instant(moment: dt.datetime) -> str:
    """A FHIR instant in UTC with milliseconds (``Z``, so nothing needs URL-escaping)."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class PlannedType:
    """What one run will do for one type."""

    resource_type: str
    type_plan: TypePlan
    mode: Mode
    since: dt.datetime | None
    state: SyncState | None
    #: The granted parts the searches stay within (None: the whole type).
    parts: tuple[Part, ...] | None = None
    #: Granted parts the vendor's plan cannot search within (left out, and said so).
    unsearchable: tuple[Part, ...] = ()

    @property
    def unsearchable_texts(self) -> list[str]:
        """The granted parts left out, as scope qualifiers."""
        return [part_text(p) for p in self.unsearchable]

    @property
    def part_texts(self) -> list[str] | None:
        """The searched parts as stored in ``sync_states.granted_parts`` (None: whole)."""
        return None if self.parts is None else [part_text(p) for p in self.parts]

    def searches(self, patient_id: str) -> Iterator[dict[str, str]]:
        """The parameters of each search the type needs (after ``since`` when incremental)."""
        for params in self.type_plan.searches(patient_id):
            if self.since is not None:
                params["_lastUpdated"] = f"gt{_instant(self.since)}"
            yield params


@dataclass
class RunPlan:
    """The types a run pulls, in order, and when each type it leaves out is due."""

    types: list[PlannedType] = field(default_factory=list)
    waiting: dict[str, dt.datetime] = field(default_factory=dict)


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


def covered_before(state: SyncState | None) -> TypeGrant | None:
    """What the type's watermark holds for: the parts its last completed pull searched."""
    if state is None or state.watermark is None:
        return None
    if state.granted_parts is None:
        return TypeGrant(state.resource_type)
    parts = tuple(p for p in (part_of_text(t) for t in state.granted_parts) if p is not None)
    return TypeGrant(state.resource_type, parts)


def plan_run(
    connection: Connection,
    tenant: Tenant,
    vendor_plan: VendorPlan,
    states: Mapping[str, SyncState],
    *,
    full: bool,
    types: Sequence[str] | None,
    now: dt.datetime,
    interval: dt.timedelta,
) -> RunPlan:
    """The plans of the types due in this run, and when each of the others is due."""
    # Only what the *granted* scopes cover and the server can serve, in the operator's order,
    # and of each type only the parts granted.
    grants = type_grants(connection.granted_scopes, pullable_types(tenant, vendor_plan))
    wanted = list(grants)
    # A forced run, or one narrowed to named types, pulls them whatever their schedule.
    scheduled = not full and types is None
    if types is not None:
        wanted = [t for t in wanted if t in set(types)]
    retry_run = scheduled and _retry_run(connection, states)
    config = smart_configuration(tenant)
    plan = RunPlan()
    for resource_type in wanted:
        granted = within_grant(vendor_plan.for_type(resource_type), grants[resource_type])
        type_plan = granted.plan
        parts = granted.searched
        if parts == ():
            # Every granted part is one this vendor cannot search: nothing to ask. The type's
            # state says so (``unsearchable``, recorded as the run began).
            continue
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
                plan.waiting[resource_type] = wait
                continue
        incremental_ok = resource_type != "Patient" and supports_last_updated(type_plan, config)
        covered = covered_before(state)
        due_full = (
            full
            # A part the watermark does not hold for (newly granted) is pulled in full.
            or covered is None
            or not covered.covers(TypeGrant(resource_type, parts))
            or not incremental_ok
            or state is None
            or state.watermark is None
            or state.last_full_at is None
            or now - state.last_full_at >= FULL_RECONCILIATION_INTERVAL
        )
        if due_full:
            mode: Mode = "full"
            since: dt.datetime | None = None
        else:
            assert state is not None  # noqa: S101 - due_full covers a missing state
            assert state.watermark is not None  # noqa: S101 - ditto for a missing watermark
            mode, since = "incremental", state.watermark - WATERMARK_OVERLAP
        plan.types.append(
            PlannedType(resource_type, type_plan, mode, since, state, parts, granted.unsearchable)
        )
    return plan
