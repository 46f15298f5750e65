"""What a grant lets syncsvc read, and keeping the per-type states in line with it.

The readable types of a connection are the tenant's configured types that the *granted* scopes
cover: the pull plans only those, the launch calls a connection that can read none ``no_access``,
and a refresh that changes the grant compares the two sets. Types outside the grant keep a
``sync_states`` row that says why they are not pulled: ``not_granted`` (never granted) or
``withdrawn`` (granted before: what was synced is kept and never shown as up to date).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import disconnect_repo, reference_repo, repo, run_repo
from syncsvc.db.models.connections import Connection, Tenant
from syncsvc.db.models.records import SyncState
from syncsvc.db.reference_repo import ReferenceCounts
from syncsvc.db.stats_repo import count_resources
from syncsvc.fhir.references import REFERENCED_TYPES
from syncsvc.smart.scopes import DEFAULT_RESOURCE_TYPES, covered_types, parse_scope
from syncsvc.sync.explain import Explanation, GrantFacts, TypeFacts, explain
from syncsvc.sync.reference_words import ReferenceFacts
from syncsvc.sync.tenant_config import resource_types_of
from syncsvc.sync.type_support import pullable_types, record_unsupported, unsupported_types
from syncsvc.vocabulary import UNGRANTED_TYPE_STATES

OFFLINE_ACCESS = "offline_access"


def readable_types(granted: Iterable[str], tenant: Tenant) -> list[str]:
    """The tenant's configured types that ``granted`` lets syncsvc read, in the tenant's order.

    A type the tenant's server cannot serve (``unsupported``) is never readable, whatever the
    grant says.
    """
    return covered_types(granted, pullable_types(tenant))


def requested_types(requested: Iterable[str]) -> list[str]:
    """The resource types named by explicit resource scopes in ``requested``."""
    types = (parse_scope(scope) for scope in requested)
    return list(dict.fromkeys(t.resource_type for t in types if t and t.resource_type != "*"))


def rescoped(
    recorded: Sequence[str],
    requested: Sequence[str],
    returned: Sequence[str],
    *,
    holds_refresh_token: bool,
) -> list[str] | None:
    """The grant a refresh's ``scope`` describes, or None when it is the recorded one.

    Narrows to what the response names and widens to what it names beyond the recorded grant,
    but never past what was requested at launch (the patient approved no more than that).
    ``offline_access`` stays while a refresh token is held: Epic leaves it out of every
    ``scope`` it returns while still issuing refresh tokens. Callers pass only a response that
    carried a non-empty ``scope``; one without says nothing about the grant.
    """
    named = {scope.lower() for scope in returned}
    asked = {scope.lower() for scope in requested}
    kept = [
        scope
        for scope in recorded
        if scope.lower() in named or (holds_refresh_token and scope.lower() == OFFLINE_ACCESS)
    ]
    seen = {scope.lower() for scope in kept}
    added = [s for s in returned if s.lower() in asked and s.lower() not in seen]
    result = kept + list(dict.fromkeys(added))
    if {s.lower() for s in result} == {s.lower() for s in recorded}:
        return None
    return result


@dataclass(frozen=True)
class GrantChange:
    """Types a grant change took away and gave, in the tenant's order."""

    withdrawn: tuple[str, ...]
    added: tuple[str, ...]

    @property
    def changed(self) -> bool:
        """Whether any readable type came or went."""
        return bool(self.withdrawn or self.added)


def grant_change(tenant: Tenant, before: Iterable[str], after: Iterable[str]) -> GrantChange:
    """Which readable types moving the grant from ``before`` to ``after`` withdrew and added."""
    old, new = readable_types(before, tenant), readable_types(after, tenant)
    return GrantChange(
        withdrawn=tuple(t for t in old if t not in new),
        added=tuple(t for t in new if t not in old),
    )


async def reconcile_type_states(
    session: AsyncSession, connection: Connection, tenant: Tenant, *, now: dt.datetime
) -> None:
    """Make each type's ``sync_states`` row agree with the connection's current grant.

    A type the grant covers loses a ``not_granted``/``withdrawn`` row, so the next pull takes
    it in full. A type it does not cover becomes ``withdrawn`` when anything of it was synced or
    attempted before, else ``not_granted``. A type the server cannot serve is ``unsupported``
    whatever the grant (:func:`~syncsvc.sync.type_support.record_unsupported`). In the caller's
    transaction.
    """
    readable = set(readable_types(connection.granted_scopes, tenant))
    states = await run_repo.sync_states(session, connection.id)
    if await record_unsupported(session, connection.id, tenant, states, now=now):
        states = await run_repo.sync_states(session, connection.id)
    unsupported = unsupported_types(tenant)
    stored = await count_resources(session, connection.id)
    configured = resource_types_of(tenant)
    # The shared types a record references are read beside the types, not as types of their
    # own (:mod:`syncsvc.sync.references`): they get no type state, unless configured as types.
    shared = set(REFERENCED_TYPES) - set(configured)
    considered = dict.fromkeys(
        name
        for name in [
            *configured,
            *requested_types(connection.requested_scopes),
            *states,
            *stored,
        ]
        if name not in shared
    )
    for resource_type in considered:
        if resource_type in unsupported:
            continue
        state = states.get(resource_type)
        if resource_type in readable:
            if state is not None and state.status in UNGRANTED_TYPE_STATES:
                await _forget(session, connection.id, resource_type)
            continue
        if state is not None and state.status == "withdrawn":
            continue
        had_something = resource_type in stored or (
            state is not None and state.status != "not_granted"
        )
        target = "withdrawn" if had_something else "not_granted"
        if state is not None and state.status == target:
            continue
        await run_repo.save_sync_state(
            session,
            connection.id,
            resource_type,
            now=now,
            status=target,
            error_class=None,
            error_message=None,
            grant_fingerprint=None,
        )


async def _forget(session: AsyncSession, connection_id: str, resource_type: str) -> None:
    await session.execute(
        delete(SyncState).where(
            SyncState.connection_id == connection_id, SyncState.resource_type == resource_type
        )
    )


def grant_facts(
    connection: Connection,
    tenant: Tenant | None,
    *,
    has_refresh_token: bool,
    access_expires_at: dt.datetime | None,
    states: Mapping[str, SyncState],
    counts: Mapping[str, int],
    revocation_pending: bool = False,
    references: ReferenceCounts | None = None,
) -> GrantFacts:
    """The facts :func:`syncsvc.sync.explain.explain` words, from rows the caller has read."""
    candidates = pullable_types(tenant) if tenant is not None else DEFAULT_RESOURCE_TYPES
    shared = None
    if references is not None:
        shared = ReferenceFacts(
            granted_types=tuple(covered_types(connection.granted_scopes, REFERENCED_TYPES)),
            states=dict(references.states),
            outside_kinds=dict(references.outside_kinds),
            over_cap=references.over_cap,
            resolved_at=references.resolved_at,
        )
    return GrantFacts(
        status=connection.status,
        reason=connection.status_reason,
        status_message=connection.status_message,
        requested_scopes=tuple(connection.requested_scopes),
        granted_scopes=tuple(connection.granted_scopes),
        has_refresh_token=has_refresh_token,
        access_expires_at=access_expires_at,
        readable_types=tuple(covered_types(connection.granted_scopes, candidates)),
        types={
            name: TypeFacts(
                state=state.status,
                last_success_at=state.last_success_at,
                next_attempt_at=state.next_attempt_at,
                failing_since=state.failing_since,
            )
            for name, state in states.items()
        },
        counts=dict(counts),
        revocation_pending=revocation_pending,
        references=shared,
    )


async def load_grant_facts(
    session: AsyncSession, connection: Connection, tenant: Tenant | None
) -> GrantFacts:
    """Read what :func:`grant_facts` needs for one connection (in the caller's session)."""
    credentials = await repo.get_credentials(session, connection.id)
    pending = await disconnect_repo.pending_revocations_of(session, connection.id)
    return grant_facts(
        connection,
        tenant,
        has_refresh_token=credentials is not None and credentials.refresh_token_enc is not None,
        access_expires_at=credentials.access_expires_at if credentials is not None else None,
        states=await run_repo.sync_states(session, connection.id),
        counts=await count_resources(session, connection.id),
        revocation_pending=bool(pending),
        references=await reference_repo.reference_counts(session, connection.id),
    )


async def explain_connection(
    session: AsyncSession, connection: Connection, tenant: Tenant | None
) -> Explanation:
    """The connection's state in sentences, read in the caller's session."""
    return explain(await load_grant_facts(session, connection, tenant))
