"""The synced FHIR resources, their history and paging cursors, and the sync runs that keep them."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, get_args

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from syncsvc.db.base import Base, UTCDateTime
from syncsvc.db.columns import (
    HASH_LENGTH,
    ID_LENGTH,
    RESOURCE_ID_LENGTH,
    RESOURCE_TYPE_LENGTH,
    in_check,
    new_id,
)
from syncsvc.vocabulary import REFERENCE_STATES, RUN_OUTCOMES, TYPE_STATES

DeletedReason = Literal["vanished", "entered-in-error"]
DELETED_REASONS: tuple[str, ...] = get_args(DeletedReason)
#: Kept under its old name for the check constraint; the states are the vocabulary's.
TYPE_SYNC_STATUSES: tuple[str, ...] = TYPE_STATES


class Resource(Base):
    """The current version of one synced FHIR resource, as canonical JSON bytes.

    The body is opaque bytes, never JSONB: the stored bytes are exactly the ones hashed, and
    PostgreSQL writes bytes about twice as fast as it parses JSONB. ``seq`` grows on every
    insert, change and deletion within a connection, so a host application can read what is
    new since its last cursor.
    """

    __tablename__ = "resources"
    __table_args__ = (
        PrimaryKeyConstraint("connection_id", "resource_type", "resource_id"),
        UniqueConstraint("connection_id", "seq"),
        CheckConstraint(in_check("deleted_reason", DELETED_REASONS), name="deleted_reason"),
    )

    connection_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("connections.id", ondelete="CASCADE")
    )
    resource_type: Mapped[str] = mapped_column(String(RESOURCE_TYPE_LENGTH))
    resource_id: Mapped[str] = mapped_column(String(RESOURCE_ID_LENGTH))
    version_id: Mapped[str | None] = mapped_column(String(RESOURCE_ID_LENGTH))
    #: ``meta.lastUpdated`` as the EHR reported it.
    last_updated: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    body: Mapped[bytes] = mapped_column(LargeBinary())
    #: SHA-256 hex of ``body``.
    content_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    seq: Mapped[int] = mapped_column(BigInteger())
    #: When syncsvc wrote this version (or the deletion flag).
    stored_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    deleted_reason: Mapped[str | None] = mapped_column(String(32))


class ResourceHistory(Base):
    """A version of a resource that a later sync replaced."""

    __tablename__ = "resource_history"
    __table_args__ = (
        Index(
            "ix_resource_history_connection_id_resource_type_resource_id",
            "connection_id",
            "resource_type",
            "resource_id",
        ),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True
    )
    connection_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("connections.id", ondelete="CASCADE")
    )
    resource_type: Mapped[str] = mapped_column(String(RESOURCE_TYPE_LENGTH))
    resource_id: Mapped[str] = mapped_column(String(RESOURCE_ID_LENGTH))
    version_id: Mapped[str | None] = mapped_column(String(RESOURCE_ID_LENGTH))
    last_updated: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    body: Mapped[bytes] = mapped_column(LargeBinary())
    content_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    #: The ``seq`` this version had while it was current.
    seq: Mapped[int] = mapped_column(BigInteger())
    stored_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    #: When the next version replaced it.
    replaced_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class ResourceCursor(Base):
    """The last ``seq`` handed out in one connection.

    Bumping this row serialises a connection's writers, so seqs commit in order and a host
    application's cursor never skips a row that commits late (a global sequence could).
    """

    __tablename__ = "resource_cursors"

    connection_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True
    )
    last_seq: Mapped[int] = mapped_column(BigInteger(), default=0)


class SyncState(Base):
    """Where the sync of one resource type of one connection stands."""

    __tablename__ = "sync_states"
    __table_args__ = (
        PrimaryKeyConstraint("connection_id", "resource_type"),
        CheckConstraint(in_check("status", TYPE_SYNC_STATUSES), name="status"),
    )

    connection_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("connections.id", ondelete="CASCADE")
    )
    resource_type: Mapped[str] = mapped_column(String(RESOURCE_TYPE_LENGTH))
    status: Mapped[str] = mapped_column(String(16))
    #: The newest ``meta.lastUpdated`` of a completed pull (EHR time, not ours).
    watermark: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_full_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_success_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    error_class: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    #: SHA-256 of the granted scopes when the type was denied: a new grant retries it.
    grant_fingerprint: Mapped[str | None] = mapped_column(String(HASH_LENGTH))
    #: The parts of the type (scope query qualifiers, ``category=<system>|<code>``) the last
    #: completed pull searched; None for the whole type. The watermark holds for these only.
    granted_parts: Mapped[list[str] | None] = mapped_column(JSON)
    #: Parts a refresh stopped sharing while the type stayed granted (``*``: all of the type
    #: but the parts still granted); what was synced of them is kept and no longer updated.
    withdrawn_parts: Mapped[list[str] | None] = mapped_column(JSON)
    #: Granted parts the tenant's vendor cannot search (not pulled, and said so): all of them
    #: for an ``unsearchable`` type, else those left out of the type's last completed pull.
    unsearchable_parts: Mapped[list[str] | None] = mapped_column(JSON)
    #: When a type in ``transient_error`` or ``failing`` is tried again (its own schedule).
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    #: Transient failures in a row, and when the first of them happened (None once it worked).
    failure_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    failing_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # Counts of the last attempt.
    new_count: Mapped[int] = mapped_column(Integer, default=0)
    changed_count: Mapped[int] = mapped_column(Integer, default=0)
    unchanged_count: Mapped[int] = mapped_column(Integer, default=0)
    deleted_count: Mapped[int] = mapped_column(Integer, default=0)
    rejected_count: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class SyncRun(Base):
    """One pull of one connection: when, how it ended, and what it did per type."""

    __tablename__ = "sync_runs"
    __table_args__ = (
        CheckConstraint(in_check("outcome", RUN_OUTCOMES), name="outcome"),
        Index("ix_sync_runs_connection_id_started_at", "connection_id", "started_at"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=new_id)
    connection_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("connections.id", ondelete="CASCADE")
    )
    #: The lease owner that ran it.
    owner: Mapped[str | None] = mapped_column(String(255))
    full: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    outcome: Mapped[str] = mapped_column(String(16), default="running")
    new_count: Mapped[int] = mapped_column(Integer, default=0)
    changed_count: Mapped[int] = mapped_column(Integer, default=0)
    unchanged_count: Mapped[int] = mapped_column(Integer, default=0)
    deleted_count: Mapped[int] = mapped_column(Integer, default=0)
    rejected_count: Mapped[int] = mapped_column(Integer, default=0)
    #: ``{type: {"status": ..., "new": n, ..., "error_class": ..., "error_message": ...}}``.
    type_results: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error_class: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    bytes_received: Mapped[int] = mapped_column(BigInteger(), default=0)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    #: Requests retried in place during the run (502/503/504, 429, 408, timeouts, resets).
    retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


#: A reference's key: ``Type/id`` under the base, ``kind:digest`` outside it.
REFERENCE_KEY_LENGTH = RESOURCE_TYPE_LENGTH + 1 + RESOURCE_ID_LENGTH


class ResourceReference(Base):
    """One reference of a connection's record to a shared resource, and where it stands.

    One row per distinct reference per connection: the read resource itself is stored once in
    ``resources`` under its type and id, however many resources name it. A reference outside the
    connection's FHIR base keeps only its kind, the type it names (if it says) and a digest.
    """

    __tablename__ = "resource_references"
    __table_args__ = (
        PrimaryKeyConstraint("connection_id", "ref_key"),
        CheckConstraint(in_check("state", REFERENCE_STATES), name="state"),
    )

    connection_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("connections.id", ondelete="CASCADE")
    )
    ref_key: Mapped[str] = mapped_column(String(REFERENCE_KEY_LENGTH))
    resource_type: Mapped[str | None] = mapped_column(String(RESOURCE_TYPE_LENGTH))
    resource_id: Mapped[str | None] = mapped_column(String(RESOURCE_ID_LENGTH))
    state: Mapped[str] = mapped_column(String(16))
    #: For ``outside_base``, its kind (``other_server``, ``contained``, ``urn`` ...).
    kind: Mapped[str | None] = mapped_column(String(16))
    first_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    #: When it was last read (or tried); a stored one is read again once this is old enough.
    checked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class ReferenceScan(Base):
    """How far a connection's stored resources have been scanned for references."""

    __tablename__ = "reference_scans"

    connection_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True
    )
    #: Resources up to this ``seq`` have had their references recorded.
    scanned_seq: Mapped[int] = mapped_column(BigInteger(), default=0)
    #: When references were last resolved.
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    #: Distinct references not recorded because the connection's cap was reached.
    over_cap: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
