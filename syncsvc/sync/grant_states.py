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
from dataclasses import dataclass, field

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import disconnect_repo, reference_repo, repo, run_repo
from syncsvc.db.models.connections import Connection, Tenant
from syncsvc.db.models.records import SyncState
from syncsvc.db.reference_repo import ReferenceCounts
from syncsvc.db.stats_repo import count_resources
from syncsvc.fhir.references import REFERENCED_TYPES
from syncsvc.smart.scope_grammar import Part, TypeGrant, part_of_text, part_text
from syncsvc.smart.scopes import (
    DEFAULT_RESOURCE_TYPES,
    covered_types,
    parse_scope,
    read_grant,
    readable_by_id,
    type_grants,
)
from syncsvc.sync.explain import Explanation, GrantFacts, TypeFacts, explain
from syncsvc.sync.reference_words import ReferenceFacts
from syncsvc.sync.tenant_config import resource_types_of
from syncsvc.sync.type_support import (
    pullable_types,
    record_unsearchable,
    record_unsupported,
    unsupported_types,
)
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
    named = {_same(scope) for scope in returned}
    kept = [
        scope
        for scope in recorded
        if _same(scope) in named or (holds_refresh_token and scope.lower() == OFFLINE_ACCESS)
    ]
    seen = {_same(scope) for scope in kept}
    added = [s for s in returned if _approved(s, requested) and _same(s) not in seen]
    result = kept + list(dict.fromkeys(added))
    if {_same(s) for s in result} == {_same(s) for s in recorded}:
        return None
    return result


def _same(scope: str) -> object:
    """What makes two spellings of a scope the same (a resource scope's parts, case kept)."""
    parsed = read_grant([scope]).scopes
    return parsed[0].key() if parsed else scope.lower()


def _approved(scope: str, requested: Sequence[str]) -> bool:
    """Whether ``scope`` is within what was requested at launch (the patient approved no more):
    a scope of some parts of a type is within a request for the whole type."""
    if scope.lower() in {r.lower() for r in requested}:
        return True
    mine = read_grant([scope]).scopes
    asked = read_grant(requested).scopes
    return bool(mine) and any(mine[0].within(other) for other in asked)


@dataclass(frozen=True)
class GrantChange:
    """Types a grant change took away and gave, in the tenant's order; and of the types kept,
    the parts it took away (``narrowed``) and gave (``widened``), as scope qualifiers (``*``:
    the rest of the type beyond the parts now granted, or the whole type once granted whole)."""

    withdrawn: tuple[str, ...]
    added: tuple[str, ...]
    narrowed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    widened: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        """Whether any readable type, or part of one, came or went."""
        return bool(self.withdrawn or self.added or self.narrowed or self.widened)


def _part_difference(mine: TypeGrant, other: TypeGrant) -> tuple[str, ...]:
    """The parts of ``mine`` that ``other`` lacks, as qualifiers (``*``: the whole type)."""
    missing = mine.missing_from(other)
    if missing is None:
        return (REST_OF_TYPE,)
    return tuple(part_text(p) for p in missing)


def grant_change(tenant: Tenant, before: Iterable[str], after: Iterable[str]) -> GrantChange:
    """Which readable types (and parts of types) moving the grant from ``before`` to ``after``
    withdrew and added."""
    types = pullable_types(tenant)
    old, new = type_grants(before, types), type_grants(after, types)
    narrowed: dict[str, tuple[str, ...]] = {}
    widened: dict[str, tuple[str, ...]] = {}
    for name in (t for t in old if t in new):
        if lost := _part_difference(old[name], new[name]):
            narrowed[name] = lost
        if gained := _part_difference(new[name], old[name]):
            widened[name] = gained
    return GrantChange(
        withdrawn=tuple(t for t in old if t not in new),
        added=tuple(t for t in new if t not in old),
        narrowed=narrowed,
        widened=widened,
    )


async def reconcile_type_states(
    session: AsyncSession, connection: Connection, tenant: Tenant, *, now: dt.datetime
) -> None:
    """Make each type's ``sync_states`` row agree with the connection's current grant.

    A type the grant covers loses a ``not_granted``/``withdrawn`` row, so the next pull takes
    it in full. A type it does not cover becomes ``withdrawn`` when anything of it was synced or
    attempted before, else ``not_granted``. A type the server cannot serve is ``unsupported``
    whatever the grant (:func:`~syncsvc.sync.type_support.record_unsupported`); one granted only
    in parts the vendor cannot search is ``unsearchable``
    (:func:`~syncsvc.sync.type_support.record_unsearchable`). In the caller's transaction.
    """
    grants = type_grants(connection.granted_scopes, pullable_types(tenant))
    readable = set(grants)
    states = await run_repo.sync_states(session, connection.id)
    if await record_unsupported(session, connection.id, tenant, states, now=now):
        states = await run_repo.sync_states(session, connection.id)
    if await record_unsearchable(
        session, connection.id, tenant, connection.granted_scopes, states, now=now
    ):
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
            elif state is not None and state.withdrawn_parts:
                still = _still_withdrawn(state.withdrawn_parts, grants[resource_type])
                if still != state.withdrawn_parts:
                    await run_repo.save_sync_state(
                        session,
                        connection.id,
                        resource_type,
                        now=now,
                        withdrawn_parts=still or None,
                    )
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


#: In ``withdrawn_parts``: all of a type but the parts still granted (it was granted whole).
REST_OF_TYPE = "*"


def _still_withdrawn(withdrawn: Sequence[str], grant: TypeGrant) -> list[str]:
    """The withdrawn parts ``grant`` does not give again."""
    kept = []
    for text in withdrawn:
        if text == REST_OF_TYPE:
            if grant.parts is not None:
                kept.append(text)
            continue
        part = part_of_text(text)
        if part is not None and not grant.covers(TypeGrant(grant.resource_type, (part,))):
            kept.append(text)
    return kept


async def record_withdrawn_parts(
    session: AsyncSession,
    connection_id: str,
    narrowed: Mapping[str, Sequence[str]],
    *,
    now: dt.datetime,
) -> None:
    """Note the parts a refresh stopped sharing of types it kept (in the caller's tx).

    Only types something was attempted of have a row to note them on; a type never pulled has
    nothing kept to speak of.
    """
    if not narrowed:
        return
    states = await run_repo.sync_states(session, connection_id)
    for resource_type, parts in narrowed.items():
        state = states.get(resource_type)
        if state is None:
            continue
        merged = list(dict.fromkeys([*(state.withdrawn_parts or []), *parts]))
        await run_repo.save_sync_state(
            session, connection_id, resource_type, now=now, withdrawn_parts=merged
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
            granted_types=tuple(readable_by_id(connection.granted_scopes, REFERENCED_TYPES)),
            states=dict(references.states),
            outside_kinds=dict(references.outside_kinds),
            over_cap=references.over_cap,
            resolved_at=references.resolved_at,
        )
    grants = type_grants(connection.granted_scopes, candidates)
    return GrantFacts(
        status=connection.status,
        reason=connection.status_reason,
        status_message=connection.status_message,
        requested_scopes=tuple(connection.requested_scopes),
        granted_scopes=tuple(connection.granted_scopes),
        has_refresh_token=has_refresh_token,
        access_expires_at=access_expires_at,
        readable_types=tuple(grants),
        parts={name: g.parts for name, g in grants.items() if g.parts is not None},
        types={
            name: TypeFacts(
                state=state.status,
                last_success_at=state.last_success_at,
                next_attempt_at=state.next_attempt_at,
                failing_since=state.failing_since,
                covered_parts=_covered(state),
                withdrawn_parts=tuple(state.withdrawn_parts or ()),
                unsearchable_parts=_parts_of(state.unsearchable_parts or ()),
            )
            for name, state in states.items()
        },
        counts=dict(counts),
        revocation_pending=revocation_pending,
        references=shared,
    )


def _covered(state: SyncState) -> tuple[Part, ...] | None:
    if state.granted_parts is None:
        return None
    return _parts_of(state.granted_parts)


def _parts_of(texts: Iterable[str]) -> tuple[Part, ...]:
    return tuple(p for p in (part_of_text(t) for t in texts) if p is not None)


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
