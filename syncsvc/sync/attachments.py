"""Fetching the attachments of a connection's clinical documents, after their resources are pulled.

A run that pulled DocumentReference or DiagnosticReport then looks at the stored ones that
changed since their attachments were last examined (and at attachments that failed, or waited
for room under the connection's cap), and for each attachment (:mod:`syncsvc.fhir.attachments`):

* inline ``data`` is decoded; a ``url`` is fetched only if it lies under the connection's exact
  FHIR base (a relative ``Binary/{id}`` is resolved against it). Any other URL is ``refused``:
  the token is never sent there.
* the request asks for the declared ``contentType`` (Cerner and Epic serve a Binary by it) and
  understands a FHIR ``Binary`` resource as the answer too; what is served must be the type
  declared, and an allowed one.
* a content over the per-attachment cap is refused while it is read (before more than the cap is
  buffered); contents over the connection's total are skipped.
* contents are deduplicated by SHA-256 within the connection and stored zlib-compressed; each
  resource's attachments are written in one short transaction, never across a request.

Nothing here fails the run or a type: each attachment ends ``stored``, ``skipped``, ``refused``
or ``failed`` with a reason (:mod:`syncsvc.vocabulary`), and failed ones are tried at the next
run. A token that cannot be had ends the stage; what was not reached is examined next time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import hashlib
import zlib
from collections.abc import Sequence
from typing import Any

import orjson
import structlog

from syncsvc.db import attachment_repo
from syncsvc.db.attachment_repo import Examined, NewBlob, SourceRow
from syncsvc.db.columns import URL_LENGTH
from syncsvc.db.models.attachments import CONTENT_TYPE_LENGTH, Attachment
from syncsvc.db.models.connections import Connection
from syncsvc.errors import SyncsvcError
from syncsvc.fhir.attachments import (
    ALLOWED_TYPES,
    FHIR_JSON,
    FHIR_JSON_TYPES,
    AttachmentRef,
    NotABinary,
    attachments_of,
    decode_base64,
    is_web_url,
    media_type,
    resolve,
    stored_type,
    unwrap_binary,
)
from syncsvc.fhir.client import FhirRequestError, RequestTransient
from syncsvc.fhir.page_limits import PageTooLarge
from syncsvc.smart.scopes import parse_scope, readable_by_id
from syncsvc.sync.context import SyncContext
from syncsvc.sync.grant_client import GrantClient, TokenUnavailable
from syncsvc.vocabulary import AttachmentReason, AttachmentState

log = structlog.get_logger("syncsvc.sync.attachments")

#: Resources whose attachments are examined at once (each fetches its attachments in turn).
RESOURCES_AT_ONCE = 4
#: Resources read from the database per batch, and examined per run at most (the rest wait for
#: the next run: the stage ends in bounded time however large a record is).
BATCH = 50
MAX_RESOURCES_PER_RUN = 5_000
#: Contents at least this large are hashed and compressed off the event loop's thread.
_THREAD_ABOVE = 64 * 1024
#: Compressing is kept only where it saves at least this share of the bytes.
_WORTH_COMPRESSING = 0.9
#: Room for the JSON around a base64 content when a server wraps it in a Binary resource.
_WRAPPER_BYTES = 64 * 1024


@dataclasses.dataclass
class AttachmentCounts:
    """What one run did with attachments."""

    stored: int = 0
    skipped: int = 0
    refused: int = 0
    failed: int = 0
    unchanged: int = 0
    #: Content bytes received (decoded) and new contents written (after deduplication).
    bytes: int = 0
    new_contents: int = 0

    def add(self, state: str) -> None:
        """Count one attachment that ended in ``state``."""
        setattr(self, state, getattr(self, state) + 1)

    def as_dict(self) -> dict[str, int]:
        """The counts by name (for the run's log line)."""
        return dataclasses.asdict(self)


class _Verdict(Exception):
    """How one attachment ended short of being stored."""

    def __init__(self, state: AttachmentState, reason: AttachmentReason, detail: str) -> None:
        super().__init__(detail)
        self.state = state
        self.reason = reason
        self.detail = detail


def binary_granted(connection: Connection) -> bool:
    """Whether the grant lets syncsvc read a document's contents (``Binary``).

    A grant that covers Binary, or one that never asked for it (the server advertises no Binary
    scope: its attachments may need none), may fetch; one whose Binary scope was trimmed may not.
    """
    if readable_by_id(connection.granted_scopes, ["Binary"]):
        return True
    asked = (parse_scope(s) for s in connection.requested_scopes)
    return not any(p is not None and p.resource_type == "Binary" for p in asked)


class AttachmentStage:
    """The attachments of one run of one connection (see the module's description)."""

    def __init__(
        self, ctx: SyncContext, connection: Connection, client: GrantClient, *, now: dt.datetime
    ) -> None:
        self.ctx = ctx
        self.connection = connection
        self.client = client
        self.now = now
        self.counts = AttachmentCounts()
        self.max_bytes = ctx.settings.max_attachment_bytes
        self.max_total = ctx.settings.max_connection_attachment_bytes
        self.may_fetch = binary_granted(connection)
        self._total = 0
        self._hashes: set[str] = set()
        #: Contents new in this run, until a write has stored them (a second document with the
        #: same content must carry it too, in case its write comes first).
        self._fresh: dict[str, asyncio.Task[NewBlob]] = {}
        self._room = asyncio.Semaphore(RESOURCES_AT_ONCE)
        #: Whether rows were replaced: contents may have lost their last user.
        self._replaced = False

    async def run(self) -> AttachmentCounts:
        """Examine what changed and store what is new; the counts of what happened."""
        cid = self.connection.id
        await self.ctx.pages.run(
            cid, functools.partial(attachment_repo.forget_gone, connection_id=cid)
        )
        async with self.ctx.sessionmaker() as session:
            keys = await attachment_repo.keys_to_examine(session, cid, limit=MAX_RESOURCES_PER_RUN)
            self._total = await attachment_repo.stored_bytes(session, cid)
            self._hashes = await attachment_repo.all_hashes(session, cid)
        try:
            for start in range(0, len(keys), BATCH):
                await self._batch(keys[start : start + BATCH])
        except TokenUnavailable as exc:
            log.warning("attachments_stopped", connection_id=cid, reason=exc.reason)
        finally:
            if self._replaced:
                drop = functools.partial(attachment_repo.drop_orphans, connection_id=cid)
                await self.ctx.pages.run(cid, drop)
        return self.counts

    async def _batch(self, keys: Sequence[tuple[str, str]]) -> None:
        async with self.ctx.sessionmaker() as session:
            rows = await attachment_repo.source_rows(session, self.connection.id, keys)
            links = await attachment_repo.links_of(session, self.connection.id, keys)
            before = await attachment_repo.examined_before(session, self.connection.id, keys)
        await asyncio.gather(
            *(
                self._resource(
                    row,
                    links.get((row.resource_type, row.resource_id), {}),
                    seen_before=(row.resource_type, row.resource_id) in before,
                )
                for row in rows
            )
        )

    async def _resource(
        self, row: SourceRow, links: dict[int, Attachment], *, seen_before: bool
    ) -> None:
        async with self._room:
            examined = await self._examine(row, links)
            examined.seen_before = seen_before or bool(links)
            self._replaced = self._replaced or examined.seen_before
            save = functools.partial(
                attachment_repo.save_examined,
                connection_id=self.connection.id,
                examined=examined,
                now=self.now,
            )
            await self.ctx.pages.run(self.connection.id, save)
        for blob in examined.blobs:
            self._fresh.pop(blob.sha256, None)

    async def _examine(self, row: SourceRow, links: dict[int, Attachment]) -> Examined:
        examined = Examined(row.resource_type, row.resource_id, row.content_hash)
        try:
            document = orjson.loads(row.body)
        except orjson.JSONDecodeError:  # stored bytes are canonical JSON: cannot happen
            return examined
        updated = None if row.last_updated is None else row.last_updated.isoformat()
        for ref in attachments_of(row.resource_type, document):
            fingerprint = ref.fingerprint(row.version_id, updated)
            old = links.get(ref.position)
            if (
                old is not None
                and old.fingerprint == fingerprint
                and old.status != "failed"
                and old.reason != "connection_cap"
            ):
                examined.links.append(_copy(old))
                if old.sha256 is not None:
                    examined.blobs += await self._still_fresh(old.sha256)
                self.counts.unchanged += 1
                continue
            link = self._link(row, ref, fingerprint)
            try:
                await self._content(ref, link, examined)
            except _Verdict as verdict:
                link.status, link.reason, link.detail = (
                    verdict.state,
                    verdict.reason,
                    verdict.detail,
                )
                if verdict.state == "refused":
                    log.warning(
                        "attachment_refused",
                        connection_id=self.connection.id,
                        resource_type=row.resource_type,
                        reason=verdict.reason,
                    )
            self.counts.add(link.status)
            examined.links.append(link)
        return examined

    async def _still_fresh(self, sha256: str) -> list[NewBlob]:
        task = self._fresh.get(sha256)
        return [] if task is None else [await task]

    def _link(self, row: SourceRow, ref: AttachmentRef, fingerprint: str) -> Attachment:
        return Attachment(
            connection_id=self.connection.id,
            resource_type=row.resource_type,
            resource_id=row.resource_id,
            position=ref.position,
            fingerprint=fingerprint,
            url=None if ref.url is None else ref.url[:URL_LENGTH],
            declared_type=ref.content_type,
            title=ref.title,
            status="failed",
            updated_at=self.now,
        )

    async def _content(self, ref: AttachmentRef, link: Attachment, examined: Examined) -> None:
        """Get one attachment's content into ``examined`` and ``link``, or raise its verdict."""
        if ref.data is not None:
            try:
                content = decode_base64(ref.data)
            except NotABinary:
                raise _Verdict("skipped", "bad_data", "The inline data is not base64.") from None
            media = _allowed(ref.media, ref.content_type)
            await self._keep(content, media, ref.content_type, link, examined)
            return
        if ref.url is None or not is_web_url(ref.url):
            raise _Verdict("skipped", "unusable_url", "The attachment's URL is not a web address.")
        target = resolve(ref.url, self.connection.fhir_base)
        if target is None:
            raise _Verdict(
                "refused",
                "outside_base",
                "The attachment points outside this provider's FHIR server; it was not "
                "requested, and the access token was not sent there.",
            )
        if not self.may_fetch:
            raise _Verdict("skipped", "not_granted", "The grant does not cover Binary.")
        if ref.media is not None:
            _allowed(ref.media, ref.content_type)
        if ref.size is not None and ref.size > self.max_bytes:
            raise _too_large(self.max_bytes)
        if self._total >= self.max_total:
            raise _cap_reached(self.max_total)
        body, served = await self._fetch(target, ref)
        content, media, header = self._unwrap(ref, body, served)
        await self._keep(content, media, header, link, examined)

    async def _fetch(self, url: str, ref: AttachmentRef) -> tuple[bytes, str]:
        def cap_for(content_type: str) -> int:
            if media_type(content_type) in FHIR_JSON_TYPES:
                return self.max_bytes * 4 // 3 + _WRAPPER_BYTES
            return self.max_bytes

        # Cerner and Epic serve a Binary as the type its attachment declares.
        # (its media type as declared: no parameters, checked by media_type for stray characters)
        accept = FHIR_JSON
        if ref.content_type and ref.media is not None:
            accept = ref.content_type.split(";", 1)[0].strip()
        try:
            # The body's bytes count against the page budget while it is read (not after:
            # a document with many large attachments must not wait on its own reservations).
            fetched = await self.client.get_body(
                url, resource_type="Binary", accept=accept, cap_for=cap_for
            )
        except PageTooLarge:
            raise _too_large(self.max_bytes) from None
        except FhirRequestError as exc:
            raise _request_failed(exc.failure.status) from None
        except RequestTransient as exc:
            raise _Verdict("failed", "transient", f"The request failed ({exc.reason}).") from None
        except TokenUnavailable:
            raise
        except SyncsvcError as exc:
            raise _Verdict("failed", "transient", exc.message) from None
        self.counts.bytes += len(fetched.body)
        return fetched.body, fetched.content_type

    def _unwrap(
        self, ref: AttachmentRef, body: bytes, served: str
    ) -> tuple[bytes, str, str | None]:
        """The content, its media type and Content-Type header, from what was served."""
        served_media = media_type(served)
        if served_media in FHIR_JSON_TYPES and ref.media not in FHIR_JSON_TYPES:
            try:
                inner, content = unwrap_binary(body)
            except NotABinary as exc:
                raise _Verdict(
                    "skipped", "bad_data", f"The EHR's Binary was unusable: {exc}."
                ) from None
            inner_media = media_type(inner)
            if ref.media is not None and inner_media is not None and inner_media != ref.media:
                raise _mismatch(ref.media, inner_media)
            media = _allowed(ref.media or inner_media, ref.content_type or inner)
            if len(content) > self.max_bytes:
                raise _too_large(self.max_bytes)
            return content, media, inner
        if ref.media is not None and served_media != ref.media:
            raise _mismatch(ref.media, served_media)
        return body, _allowed(served_media, served), served

    async def _keep(
        self,
        content: bytes,
        media: str,
        header: str | None,
        link: Attachment,
        examined: Examined,
    ) -> None:
        """Store ``content`` (once per connection) and make ``link`` point at it."""
        size = len(content)
        if size > self.max_bytes:
            raise _too_large(self.max_bytes)
        digest = await _off_loop(size, lambda: hashlib.sha256(content).hexdigest())
        if digest not in self._hashes:
            if self._total + size > self.max_total:
                raise _cap_reached(self.max_total)
            self._total += size
            self._hashes.add(digest)
            self._fresh[digest] = asyncio.create_task(_compressed(digest, content))
            self.counts.new_contents += 1
        examined.blobs += await self._still_fresh(digest)
        link.status, link.reason, link.detail = "stored", None, None
        link.content_type = stored_type(media, header)[:CONTENT_TYPE_LENGTH]
        link.sha256 = digest
        link.size = size


def _allowed(media: str | None, declared: str | None) -> str:
    if media is None or media not in ALLOWED_TYPES:
        shown = (declared or "none")[:80]
        raise _Verdict("skipped", "type_not_allowed", f"The content type {shown} is not kept.")
    return media


def _mismatch(declared: str, served: str | None) -> _Verdict:
    return _Verdict(
        "skipped",
        "type_mismatch",
        f"Declared as {declared} but served as {served or 'no content type'}.",
    )


def _too_large(limit: int) -> _Verdict:
    return _Verdict("skipped", "too_large", f"Larger than the {limit:,}-byte limit per document.")


def _cap_reached(limit: int) -> _Verdict:
    return _Verdict(
        "skipped",
        "connection_cap",
        f"This connection's documents already take up the {limit:,}-byte limit.",
    )


def _request_failed(status: int) -> _Verdict:
    if status == 403:
        return _Verdict("failed", "denied", "The EHR refused to send it (HTTP 403).")
    if status in (404, 410):
        return _Verdict("failed", "not_found", f"The EHR no longer has it (HTTP {status}).")
    if status in (408, 429) or status >= 500:
        return _Verdict("failed", "transient", f"The EHR did not answer (HTTP {status}).")
    return _Verdict("failed", "http_error", f"The EHR answered HTTP {status}.")


def _copy(old: Attachment) -> Attachment:
    columns = Attachment.__table__.columns.keys()
    values: dict[str, Any] = {name: getattr(old, name) for name in columns}
    return Attachment(**values)


async def _off_loop(size: int, work: Any) -> Any:
    return await asyncio.to_thread(work) if size >= _THREAD_ABOVE else work()


async def _compressed(digest: str, content: bytes) -> NewBlob:
    size = len(content)
    packed: bytes = await _off_loop(size, lambda: zlib.compress(content, 6))
    if len(packed) <= size * _WORTH_COMPRESSING:
        return NewBlob(digest, size, "zlib", packed)
    return NewBlob(digest, size, "identity", content)
