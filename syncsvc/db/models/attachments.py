"""The attachments of a connection's clinical documents: their contents, and what became of each.

Contents are stored once per connection and SHA-256 (``attachment_blobs``), compressed, in the
database (one place to back up and to erase). ``attachments`` says, for each attachment of a
stored DocumentReference or DiagnosticReport (by its position in ``content`` or
``presentedForm``), whether its content is stored, skipped, refused or failed, and why.
``attachment_sources`` records which version of each such resource was last examined, so a sync
looks again only at resources that changed. Nothing is shared between connections: the same
document synced for two patients is two blobs, and erasing one connection erases only its own.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from syncsvc.db.base import Base, UTCDateTime
from syncsvc.db.columns import (
    HASH_LENGTH,
    ID_LENGTH,
    RESOURCE_ID_LENGTH,
    RESOURCE_TYPE_LENGTH,
    URL_LENGTH,
    in_check,
)
from syncsvc.vocabulary import ATTACHMENT_REASONS, ATTACHMENT_STATES

#: How a blob's bytes are stored: zlib-compressed, or as they are when compressing did not pay
#: (PDFs and images are mostly compressed already).
BLOB_CODECS: tuple[str, ...] = ("zlib", "identity")
CONTENT_TYPE_LENGTH = 255
TITLE_LENGTH = 200


class AttachmentBlob(Base):
    """One stored content of one connection, by its SHA-256."""

    __tablename__ = "attachment_blobs"
    __table_args__ = (
        PrimaryKeyConstraint("connection_id", "sha256"),
        CheckConstraint(in_check("codec", BLOB_CODECS), name="codec"),
    )

    connection_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("connections.id", ondelete="CASCADE")
    )
    #: SHA-256 hex of the content as the EHR sent it (decoded, uncompressed).
    sha256: Mapped[str] = mapped_column(String(HASH_LENGTH))
    #: The content's size in bytes, uncompressed.
    size: Mapped[int] = mapped_column(BigInteger())
    codec: Mapped[str] = mapped_column(String(16))
    data: Mapped[bytes] = mapped_column(LargeBinary())
    stored_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class Attachment(Base):
    """One attachment of a stored resource and what became of it."""

    __tablename__ = "attachments"
    __table_args__ = (
        PrimaryKeyConstraint("connection_id", "resource_type", "resource_id", "position"),
        ForeignKeyConstraint(
            ["connection_id", "sha256"],
            ["attachment_blobs.connection_id", "attachment_blobs.sha256"],
            name="fk_attachments_blob",
        ),
        CheckConstraint(in_check("status", ATTACHMENT_STATES), name="status"),
        CheckConstraint(in_check("reason", ATTACHMENT_REASONS), name="reason"),
        Index("ix_attachments_connection_id_sha256", "connection_id", "sha256"),
    )

    connection_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("connections.id", ondelete="CASCADE")
    )
    resource_type: Mapped[str] = mapped_column(String(RESOURCE_TYPE_LENGTH))
    resource_id: Mapped[str] = mapped_column(String(RESOURCE_ID_LENGTH))
    #: Its index in ``content`` (DocumentReference) or ``presentedForm`` (DiagnosticReport).
    position: Mapped[int] = mapped_column(Integer())
    #: SHA-256 of what decides whether to fetch again: the resource's version and lastUpdated
    #: and the attachment's url, contentType, size, hash and inline data.
    fingerprint: Mapped[str] = mapped_column(String(HASH_LENGTH))
    #: The URL as the resource gave it (cut to the column), or None for inline data.
    url: Mapped[str | None] = mapped_column(String(URL_LENGTH))
    declared_type: Mapped[str | None] = mapped_column(String(CONTENT_TYPE_LENGTH))
    title: Mapped[str | None] = mapped_column(String(TITLE_LENGTH))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(32))
    #: What went wrong in words (an HTTP status, the type that was served), never a URL.
    detail: Mapped[str | None] = mapped_column(Text)
    #: The stored content's type, its SHA-256 and size (when ``stored``).
    content_type: Mapped[str | None] = mapped_column(String(CONTENT_TYPE_LENGTH))
    sha256: Mapped[str | None] = mapped_column(String(HASH_LENGTH))
    size: Mapped[int | None] = mapped_column(BigInteger())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class AttachmentSource(Base):
    """The version of a document or report whose attachments were last examined."""

    __tablename__ = "attachment_sources"
    __table_args__ = (PrimaryKeyConstraint("connection_id", "resource_type", "resource_id"),)

    connection_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("connections.id", ondelete="CASCADE")
    )
    resource_type: Mapped[str] = mapped_column(String(RESOURCE_TYPE_LENGTH))
    resource_id: Mapped[str] = mapped_column(String(RESOURCE_ID_LENGTH))
    #: ``resources.content_hash`` of the version examined.
    resource_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    examined_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
