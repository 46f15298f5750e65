"""Reading the shared resources a connection's record references, after its types are pulled.

A patient's resources name Practitioner, PractitionerRole, Organization, Location and
Medication resources; a host application needs them to say who treated the patient, where, and
with what. After a run has pulled the record, :class:`ReferenceResolver`:

1. scans the resources stored since its last scan (``reference_scans.scanned_seq``) for
   references (:mod:`syncsvc.fhir.references`, on the stored bytes, without parsing them) and
   records each distinct one once per connection (``resource_references``), up to
   ``reference_max_per_connection``. A reference outside the connection's FHIR base is recorded
   as ``outside_base`` with its kind and never followed: the token goes only to the base.
2. reads the references due, at most ``reference_reads_per_run`` a run, of the types the
   *granted* scopes let it read: never read, failed last time, newly granted, or read longer ago
   than ``reference_max_age_seconds`` (a week by default: such resources change rarely, and a
   record names hundreds). Where the server's CapabilityStatement lists ``_id`` for the type,
   :data:`IDS_PER_SEARCH` ids go in one ``_id=a,b,c`` search; otherwise each is read by id,
   :data:`READS_AT_ONCE` at a time. Every request goes through the run's client: the tenant's
   rate budget, page caps, retries in place and the base check apply as to every other request.
3. stores what it read per connection through the page pipeline (as ``resources`` rows of their
   own type: one copy per reference per connection, served by the host API like the rest), flags
   a stored one the EHR no longer has as vanished, and records each reference's new state.

The stored resources name further shared resources (a PractitionerRole its Practitioner and
Location), so the scan and the reads run again on what was just stored, :data:`PASSES` times at
most. A failure here never fails the run: what was read is kept, the rest is retried next run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import reference_repo, resource_writes
from syncsvc.db.models.connections import Connection
from syncsvc.db.reference_repo import Due, FoundReference
from syncsvc.errors import SyncsvcError
from syncsvc.fhir.bundle import parse_bundle
from syncsvc.fhir.client import FhirRequestError, RequestTransient
from syncsvc.fhir.references import REFERENCED_TYPES, Outside, Target, references_in
from syncsvc.smart.discovery import SmartConfiguration
from syncsvc.smart.scopes import covered_types, readable_by_id
from syncsvc.sync.context import SyncContext
from syncsvc.sync.grant_client import GrantClient, TokenUnavailable
from syncsvc.sync.pipeline.prepare import PreparedPage, prepare_shared
from syncsvc.sync.pipeline.store import Counts

log = structlog.get_logger("syncsvc.sync.references")

#: Ids in one ``_id`` search (a URL of a few kilobytes at most).
IDS_PER_SEARCH = 50
#: Reads by id in flight at once for one connection (where ``_id`` search is not listed).
READS_AT_ONCE = 4
#: Scans and reads of one run: the record, then the shared resources the first pass stored.
PASSES = 2
#: Stored resources scanned per database read.
SCAN_CHUNK = 2_000
#: Scan chunks per pass at most (bounds a pass over a record of 20 million resources).
MAX_SCAN_CHUNKS = 10_000


@dataclass
class ReferenceResult:
    """What one run did with the record's references."""

    #: References recorded for the first time, and new ones left out by the connection's cap.
    found: int = 0
    over_cap: int = 0
    #: References asked for, and how they came back.
    asked: int = 0
    stored: int = 0
    missing: int = 0
    denied: int = 0
    failed: int = 0
    counts: Counts = field(default_factory=Counts)
    #: Why reading stopped early (a failure that would fail every further read), if it did.
    stopped: str | None = None


class _Stop(Exception):
    """Stop reading this run (the token, the tenant or the network is gone for now)."""


@dataclass
class _Page:
    """A decoded ``_id`` search page: its links and its prepared shared resources."""

    url: str
    next_url: str | None
    self_url: str | None
    prepared: PreparedPage
    ids: list[str]


class ReferenceResolver:
    """Resolve one connection's references in one run, with the run's client."""

    def __init__(
        self,
        ctx: SyncContext,
        connection: Connection,
        client: GrantClient,
        config: SmartConfiguration | None,
        *,
        meter: Callable[[Counts], None],
    ) -> None:
        self.ctx = ctx
        self.connection = connection
        self.client = client
        self.config = config
        self._meter = meter
        settings = ctx.settings
        self.max_age = dt.timedelta(seconds=settings.reference_max_age_seconds)
        self.budget = settings.reference_reads_per_run
        self.cap = settings.reference_max_per_connection
        #: The shared types the grant lets syncsvc read by id.
        self.granted = readable_by_id(connection.granted_scopes, REFERENCED_TYPES)
        #: Of those, the ones it may also search (an ``_id`` search needs ``s`` beside ``r``).
        self.searchable = frozenset(covered_types(connection.granted_scopes, self.granted))
        self.result = ReferenceResult()

    async def resolve(self) -> ReferenceResult:
        """Scan, read and store; never raises for the EHR's failures."""
        if not self.granted:
            # Nothing could be read: not even the scan is paid for. Surfaces say the grant
            # does not include them; a later grant that does scans the whole record.
            return self.result
        try:
            for _ in range(PASSES):
                await self._scan()
                due = await self._due()
                if not due:
                    break
                await self._read(due)
        except _Stop as stop:
            self.result.stopped = str(stop)
        now = self.ctx.now()
        granted = self.granted

        async def finish(session: AsyncSession) -> None:
            await reference_repo.mark_not_granted(session, self.connection.id, granted)
            position = await reference_repo.scan_position(session, self.connection.id)
            await reference_repo.save_scan(
                session, self.connection.id, scanned_seq=position, resolved_at=now
            )

        await self.ctx.pages.run(self.connection.id, finish)
        return self.result

    # --- scanning --------------------------------------------------------------------------

    async def _scan(self) -> None:
        """Record the references of the resources stored since the last scan."""
        connection = self.connection
        base = connection.fhir_base
        async with self.ctx.sessionmaker() as session:
            position = await reference_repo.scan_position(session, connection.id)
        for _ in range(MAX_SCAN_CHUNKS):
            async with self.ctx.sessionmaker() as session:
                rows = await reference_repo.resources_after(
                    session, connection.id, position, limit=SCAN_CHUNK
                )
            if not rows:
                return
            found: dict[str, FoundReference] = {}
            for _seq, body in rows:
                for reference in references_in(body, base):
                    if reference.key not in found:
                        found[reference.key] = _found(reference)
            position = rows[-1][0]
            record = functools.partial(self._record, found=found, position=position)
            added, over_cap = await self.ctx.pages.run(connection.id, record)
            self.result.found += added
            self.result.over_cap += over_cap
            await asyncio.sleep(0)  # a long scan lets the event loop's other work run

    async def _record(
        self, session: AsyncSession, *, found: dict[str, FoundReference], position: int
    ) -> tuple[int, int]:
        added, over_cap = await reference_repo.record_references(
            session, self.connection.id, found, cap=self.cap, now=self.ctx.now()
        )
        await reference_repo.save_scan(
            session, self.connection.id, scanned_seq=position, over_cap=over_cap
        )
        return added, over_cap

    async def _due(self) -> list[Due]:
        room = self.budget - self.result.asked
        async with self.ctx.sessionmaker() as session:
            return await reference_repo.due_references(
                session,
                self.connection.id,
                self.granted,
                stale_before=self.ctx.now() - self.max_age,
                limit=room,
            )

    # --- reading ---------------------------------------------------------------------------

    async def _read(self, due: Sequence[Due]) -> None:
        """Read the due references, type by type, and store what came back."""
        by_type: dict[str, list[Due]] = {}
        for item in due:
            by_type.setdefault(item.resource_type, []).append(item)
        for resource_type in REFERENCED_TYPES:
            items = by_type.get(resource_type)
            if items:
                self.result.asked += len(items)
                await self._read_type(resource_type, items)

    async def _read_type(self, resource_type: str, items: list[Due]) -> None:
        connection, client = self.connection, self.client
        pages = await self.ctx.pages.open(
            connection.id,
            resource_type,
            patient_id=connection.patient_id,
            base=connection.fhir_base,
            max_entries=client.limits.max_entries,
            counts=self.result.counts,
            rejected=[],
            meter=self._meter,
        )
        outcome = _Outcome()
        try:
            try:
                if (
                    resource_type in self.searchable
                    and self.config is not None
                    and self.config.supports_search_param(resource_type, "_id")
                ):
                    await self._search(resource_type, items, pages.put, outcome)
                else:
                    await self._read_each(resource_type, items, pages.put, outcome)
            finally:
                await pages.drain()
        finally:
            # What was answered is recorded even when reading stopped half-way.
            await self._save(resource_type, items, outcome)

    async def _search(
        self,
        resource_type: str,
        items: list[Due],
        put: Callable[[PreparedPage], Awaitable[None]],
        outcome: _Outcome,
    ) -> None:
        """``_id`` searches of :data:`IDS_PER_SEARCH` ids each; ids not returned are missing."""
        for start in range(0, len(items), IDS_PER_SEARCH):
            batch = [item.resource_id for item in items[start : start + IDS_PER_SEARCH]]
            wanted = set(batch)

            async def decode(url: str, body: bytes, wanted: set[str] = wanted) -> _Page:
                page = parse_bundle(body, self.client.limits.max_entries)
                prepared = prepare_shared(page.resources, resource_type, wanted)
                ids = [item.resource_id for item in prepared.items]
                return _Page(url, page.next_url, page.self_url, prepared, ids)

            params = {"_id": ",".join(batch), "_count": str(len(batch))}
            returned: set[str] = set()
            try:
                async for page in self.client.search(resource_type, params, decode):
                    await put(page.prepared)
                    returned.update(page.ids)
            except SyncsvcError as exc:
                if _refused_search(exc):
                    # The server lists ``_id`` but refuses it: read this batch one by one.
                    await self._read_each(
                        resource_type, items[start : start + IDS_PER_SEARCH], put, outcome
                    )
                    continue
                self._failed(outcome, batch, exc)
                continue
            outcome.stored.extend(i for i in batch if i in returned)
            outcome.missing.extend(i for i in batch if i not in returned)

    async def _read_each(
        self,
        resource_type: str,
        items: list[Due],
        put: Callable[[PreparedPage], Awaitable[None]],
        outcome: _Outcome,
    ) -> None:
        """Reads by id, :data:`READS_AT_ONCE` at a time, stored as one page."""
        room = asyncio.Semaphore(READS_AT_ONCE)
        read: list[dict[str, Any]] = []
        stop: list[_Stop] = []

        async def one(resource_id: str) -> None:
            async with room:
                if stop:
                    outcome.failed.append(resource_id)
                    return
                try:
                    read.append(await self.client.read(resource_type, resource_id))
                except SyncsvcError as exc:
                    try:
                        self._failed(outcome, [resource_id], exc)
                    except _Stop as stopped:
                        stop.append(stopped)

        await asyncio.gather(*(one(item.resource_id) for item in items))
        prepared = prepare_shared(read, resource_type, {item.resource_id for item in items})
        if prepared.items:
            await put(prepared)
        outcome.stored.extend(item.resource_id for item in prepared.items)
        if stop:
            raise stop[0]

    def _failed(self, outcome: _Outcome, ids: list[str], exc: SyncsvcError) -> None:
        """Sort a failed request's ids by what the EHR said; raises _Stop when no further
        request could succeed now."""
        kind = exc.failure.kind if isinstance(exc, FhirRequestError) else None
        if kind in ("not_found", "gone"):
            outcome.missing.extend(ids)
            return
        if kind in ("insufficient_scope", "forbidden"):
            outcome.denied.extend(ids)
            return
        outcome.failed.extend(ids)
        if kind in ("tenant_mismatch", "invalid_token", "throttled") or isinstance(
            exc, RequestTransient | TokenUnavailable
        ):
            raise _Stop(exc.reason or type(exc).__name__)

    async def _save(self, resource_type: str, items: list[Due], outcome: _Outcome) -> None:
        """Record each reference's new state; flag a stored one the EHR no longer has."""
        now = self.ctx.now()
        connection_id = self.connection.id
        was_stored = {item.resource_id for item in items if item.state == "stored"}
        vanished = sorted(was_stored & set(outcome.missing))

        async def save(session: AsyncSession) -> int:
            for state, ids in (
                ("stored", outcome.stored),
                ("missing", outcome.missing),
                ("denied", outcome.denied),
                ("failed", outcome.failed),
            ):
                await reference_repo.mark_references(
                    session, connection_id, resource_type, ids, state=state, now=now
                )
            return await resource_writes.flag_deleted(
                session, connection_id, resource_type, vanished, reason="vanished", now=now
            )

        deleted = await self.ctx.pages.run(connection_id, save)
        result = self.result
        result.stored += len(outcome.stored)
        result.missing += len(outcome.missing)
        result.denied += len(outcome.denied)
        result.failed += len(outcome.failed)
        if deleted:
            result.counts.deleted += deleted
            self._meter(Counts(deleted=deleted))


@dataclass
class _Outcome:
    """The ids of one type's reads, by how they came back."""

    stored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _found(reference: Target | Outside) -> FoundReference:
    if isinstance(reference, Target):
        return FoundReference(
            reference.key, reference.resource_type, reference.resource_id, "pending", None
        )
    return FoundReference(
        reference.key, reference.resource_type, None, "outside_base", reference.kind
    )


def _refused_search(exc: SyncsvcError) -> bool:
    """Whether a search was refused as a search (400, or 404/405 for the type's search)."""
    return isinstance(exc, FhirRequestError) and exc.failure.kind in ("bad_request",)


def log_references(connection_id: str, result: ReferenceResult) -> None:
    """One line for a run's references (only when there was something to do)."""
    if result.found or result.asked or result.over_cap or result.stopped:
        log.info(
            "references resolved",
            connection_id=connection_id,
            found=result.found,
            over_cap=result.over_cap or None,
            asked=result.asked,
            stored=result.stored,
            missing=result.missing,
            denied=result.denied or None,
            failed=result.failed or None,
            stopped=result.stopped,
        )
