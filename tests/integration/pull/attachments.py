"""Helpers of the attachment tests: connecting with documents, reading what was stored."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from sqlalchemy import select

from syncsvc.db.models.attachments import Attachment, AttachmentBlob
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.sync.context import SyncContext
from tests.integration.connected import connect_patient, register_sandbox_tenant

from . import NANCY, StoredTokens

DOCUMENT_TYPES = ("Patient", "DocumentReference", "DiagnosticReport")


@dataclass(frozen=True)
class Stored:
    """A connection's attachment rows and its contents (decompressed), by SHA-256."""

    links: list[Attachment]
    contents: dict[str, bytes]

    def by_status(self, status: str) -> list[Attachment]:
        """The rows in ``status``."""
        return [link for link in self.links if link.status == status]

    def content(self, link: Attachment) -> bytes:
        """The stored content a row points at."""
        assert link.sha256 is not None
        return self.contents[link.sha256]


async def connected(
    ctx: SyncContext,
    sandbox: RunningSandbox,
    sandbox_tenant: str,
    *,
    patient: str = NANCY,
    user_id: str = "user-1",
    name: str | None = None,
) -> StoredTokens:
    """A connection to ``sandbox_tenant`` syncing Patient, documents and reports."""
    tenant = await register_sandbox_tenant(
        ctx.sessionmaker,
        ctx.vault,
        ctx.http,
        sandbox,
        sandbox_tenant,
        resource_types=DOCUMENT_TYPES,
        name=name,
    )
    connection = await connect_patient(
        ctx.sessionmaker,
        ctx.vault,
        ctx.http,
        sandbox,
        tenant,
        sandbox_tenant=sandbox_tenant,
        patient_id=patient,
        user_id=user_id,
    )
    return StoredTokens(ctx, connection, tenant)


async def stored_attachments(ctx: SyncContext, connection_id: str) -> Stored:
    """Everything stored about a connection's attachments."""
    async with ctx.sessionmaker() as session:
        links = list(
            await session.scalars(
                select(Attachment)
                .where(Attachment.connection_id == connection_id)
                .order_by(Attachment.resource_type, Attachment.resource_id, Attachment.position)
            )
        )
        blobs = list(
            await session.scalars(
                select(AttachmentBlob).where(AttachmentBlob.connection_id == connection_id)
            )
        )
    contents = {}
    for blob in blobs:
        data = zlib.decompress(blob.data) if blob.codec == "zlib" else blob.data
        assert len(data) == blob.size
        contents[blob.sha256] = data
    return Stored(links, contents)
