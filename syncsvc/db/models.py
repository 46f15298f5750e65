"""The tables of syncsvc as typed SQLAlchemy models.

Primary keys are UUID4 strings made in Python, so a row's id is known before it is inserted: the
vault binds each ciphertext to its row id, and connection ids appear in URLs. Columns ending in
``_enc`` hold vault ciphertexts, never plaintext. Every timestamp is timezone-aware UTC.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal, get_args

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
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

from syncsvc.fhir.ids import MAX_ID_LENGTH
from syncsvc.vocabulary import CONNECTION_STATUSES, RUN_OUTCOMES, TYPE_STATES

from .base import Base, UTCDateTime

Vendor = Literal["cerner", "epic", "generic"]
AuthMethodName = Literal["public", "client_secret_basic", "client_secret_post", "private_key_jwt"]
VENDORS: tuple[str, ...] = get_args(Vendor)
AUTH_METHOD_NAMES: tuple[str, ...] = get_args(AuthMethodName)

URL_LENGTH = 2048
ID_LENGTH = 36


#: ``least(next_refresh_at, next_sync_at)`` ignoring NULLs, spelled the same on both databases.
NEXT_DUE_SQL = (
    "CASE WHEN next_refresh_at IS NULL THEN next_sync_at "
    "WHEN next_sync_at IS NULL OR next_refresh_at < next_sync_at THEN next_refresh_at "
    "ELSE next_sync_at END"
)


def new_id() -> str:
    """A new row id (UUID4 string)."""
    return str(uuid.uuid4())


def _in(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"


class Tenant(Base):
    """One EHR FHIR base with syncsvc's client registration there."""

    __tablename__ = "tenants"
    __table_args__ = (
        CheckConstraint(_in("vendor", VENDORS), name="vendor"),
        CheckConstraint(_in("auth_method", AUTH_METHOD_NAMES), name="auth_method"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=new_id)
    #: The short handle operators use on the command line.
    name: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    vendor: Mapped[str] = mapped_column(String(16), default="generic")
    #: Normalised: no trailing slash. Also the ``aud`` sent on authorize, byte for byte.
    fhir_base: Mapped[str] = mapped_column(String(URL_LENGTH), unique=True)
    issuer: Mapped[str | None] = mapped_column(String(URL_LENGTH))
    #: authorize / token / revoke / introspect / jwks URLs from discovery.
    endpoints: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    capabilities: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: None when the server does not advertise ``scopes_supported``.
    scopes_supported: Mapped[list[str] | None] = mapped_column(JSON)
    discovery_fetched_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    discovery_error: Mapped[str | None] = mapped_column(Text)
    client_id: Mapped[str] = mapped_column(String(255))
    auth_method: Mapped[str] = mapped_column(String(32), default="public")
    client_secret_enc: Mapped[str | None] = mapped_column(Text)
    private_key_enc: Mapped[str | None] = mapped_column(Text)
    key_id: Mapped[str | None] = mapped_column(String(255))
    redirect_uri: Mapped[str] = mapped_column(String(URL_LENGTH))
    #: Resource types (or explicit scopes) the operator wants for this tenant.
    configured_scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: Per-type query plan changes over the vendor profile (``{type: {field: value}}``), e.g.
    #: a smaller ``_count`` or other required categories at this deployment.
    plan_overrides: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class Connection(Base):
    """A patient's grant at one tenant, with the exact binding it was issued for."""

    __tablename__ = "connections"
    __table_args__ = (
        UniqueConstraint("tenant_id", "user_id", "patient_id"),
        CheckConstraint(_in("status", CONNECTION_STATUSES), name="status"),
        # The scheduler's claim walks this index in due order and stops after one batch, so
        # claiming stays cheap however many connections are not due.
        Index("ix_connections_status_next_due_at_id", "status", "next_due_at", "id"),
        # Room on each page for a row's next version: with no index on a lease column, taking
        # and handing back a lease is then a heap-only (HOT) update that writes no index.
        {"postgresql_with": {"fillfactor": 80}},
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    #: The host application's user id.
    user_id: Mapped[str] = mapped_column(String(255), index=True)
    patient_id: Mapped[str] = mapped_column(String(255))
    # The binding: a token is only ever sent to URLs under this base, to this token endpoint.
    fhir_base: Mapped[str] = mapped_column(String(URL_LENGTH))
    aud: Mapped[str] = mapped_column(String(URL_LENGTH))
    issuer: Mapped[str | None] = mapped_column(String(URL_LENGTH))
    token_endpoint: Mapped[str] = mapped_column(String(URL_LENGTH))
    client_id: Mapped[str] = mapped_column(String(255))
    requested_scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    granted_scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default="active")
    status_reason: Mapped[str | None] = mapped_column(String(64))
    status_message: Mapped[str | None] = mapped_column(Text)
    error_uri: Mapped[str | None] = mapped_column(String(URL_LENGTH))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    connected_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_refresh_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_sync_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_success_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    next_refresh_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), index=True)
    next_sync_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), index=True)
    #: The earlier of the two, kept by the database itself (a stored generated column).
    next_due_at: Mapped[dt.datetime | None] = mapped_column(
        UTCDateTime(), Computed(NEXT_DUE_SQL, persisted=True)
    )
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    # Not indexed: an index here would make every lease write update all of the indexes.
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    failure_count: Mapped[int] = mapped_column(Integer, default=0)
    backoff_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class Credential(Base):
    """The encrypted tokens of one connection; ``version`` guards concurrent writers."""

    __tablename__ = "credentials"

    connection_id: Mapped[str] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True
    )
    refresh_token_enc: Mapped[str | None] = mapped_column(Text)
    access_token_enc: Mapped[str | None] = mapped_column(Text)
    access_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    refresh_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    #: The vault key id both ciphertexts are under (for ``keys status`` at a glance).
    key_id: Mapped[str] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class LaunchAttempt(Base):
    """One authorize redirect in flight: its state (hashed), PKCE verifier and nonce."""

    __tablename__ = "launch_attempts"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=new_id)
    #: sha256 hex of the ``state`` sent to the EHR; the state itself is never stored.
    state_hash: Mapped[str] = mapped_column(String(64), unique=True)
    code_verifier_enc: Mapped[str] = mapped_column(Text)
    nonce: Mapped[str] = mapped_column(String(128))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(String(255))
    #: sha256 hex of the browser-binding cookie value.
    browser_binding_hash: Mapped[str] = mapped_column(String(64))
    requested_scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    outcome: Mapped[str | None] = mapped_column(String(64))


class LaunchFailure(Base):
    """One launch that did not end in a usable connection: what the EHR said and why we stopped.

    Kept per tenant for health, ``tenants check`` and the ``syncsvc_launch_failures_total``
    metric. No tokens, no patient identifiers; ``ehr_description`` is capped and redacted
    before it is stored.
    """

    __tablename__ = "launch_failures"
    __table_args__ = (Index("ix_launch_failures_tenant_id_at", "tenant_id", "at"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True
    )
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    tenant_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("tenants.id", ondelete="CASCADE")
    )
    #: The launch attempt it ended (kept for reporting; attempts may be purged).
    attempt_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    #: The most specific code: the EHR's URN segment, else its ``error``, else syncsvc's reason.
    reason: Mapped[str] = mapped_column(String(64))
    #: syncsvc's own reason (``ehr_error``, ``state_replayed``, ``tenant_mismatch``, ...).
    syncsvc_reason: Mapped[str] = mapped_column(String(64))
    #: The EHR's OAuth ``error``, the last segment of its ``error_uri`` URN, its description.
    ehr_error: Mapped[str | None] = mapped_column(String(100))
    ehr_code: Mapped[str | None] = mapped_column(String(100))
    ehr_description: Mapped[str | None] = mapped_column(Text)


class ConnectLink(Base):
    """A signed connect link's id, so each link works once."""

    __tablename__ = "connect_links"

    #: The link's ``jti``, carried inside the signed token.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(255))
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


# --- synced resources ------------------------------------------------------------------------

DeletedReason = Literal["vanished", "entered-in-error"]
DELETED_REASONS: tuple[str, ...] = get_args(DeletedReason)
#: Kept under its old name for the check constraint; the states are the vocabulary's.
TYPE_SYNC_STATUSES: tuple[str, ...] = TYPE_STATES

RESOURCE_TYPE_LENGTH = 64
RESOURCE_ID_LENGTH = MAX_ID_LENGTH
HASH_LENGTH = 64


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
        CheckConstraint(_in("deleted_reason", DELETED_REASONS), name="deleted_reason"),
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
        CheckConstraint(_in("status", TYPE_SYNC_STATUSES), name="status"),
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
        CheckConstraint(_in("outcome", RUN_OUTCOMES), name="outcome"),
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


class Event(Base):
    """One thing that happened to a tenant's connections, for health pages and metrics.

    Refresh outcomes, sync outcomes per resource type, launches and disconnects, each with the
    error class that decides tenant health (``tenant_mismatch``, ``insufficient_scope``,
    ``invalid_grant``, ``throttled``, ``upstream_5xx``, ``timeout``, ``foreign_next_link``,
    ``compartment_violation`` ...). No tokens and no patient data, so events outlive the
    connection they were about (its id is cleared when it is erased).
    """

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_tenant_id_at", "tenant_id", "at"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True
    )
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    tenant_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("tenants.id", ondelete="CASCADE")
    )
    connection_id: Mapped[str | None] = mapped_column(
        String(ID_LENGTH), ForeignKey("connections.id", ondelete="SET NULL")
    )
    #: ``refresh``, ``sync``, ``launch``, ``disconnect``, ``revocation``, ``webhook``, ``scopes``
    #: (a refresh narrowed or widened the grant: one per type, ``withdrawn`` or ``added``).
    kind: Mapped[str] = mapped_column(String(32))
    #: ``ok`` or a failure outcome (``transient``, ``needs_reauth``, ``denied``, ...).
    outcome: Mapped[str] = mapped_column(String(32))
    error_class: Mapped[str | None] = mapped_column(String(64))
    resource_type: Mapped[str | None] = mapped_column(String(RESOURCE_TYPE_LENGTH))
    #: A short plain-words detail; never a token, body or patient identifier.
    detail: Mapped[str | None] = mapped_column(Text)
    count: Mapped[int] = mapped_column(Integer, default=1)


class PendingRevocation(Base):
    """A token to revoke at the EHR (RFC 7009) after a disconnect, retried until confirmed.

    The connection's own credentials are deleted at once on disconnect; this row keeps only the
    one token being revoked, encrypted and bound to this row, until the EHR confirms it.
    """

    __tablename__ = "pending_revocations"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("tenants.id", ondelete="CASCADE")
    )
    #: The disconnected connection's id, kept for reporting (the connection may be erased).
    connection_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    revocation_endpoint: Mapped[str] = mapped_column(String(URL_LENGTH))
    token_enc: Mapped[str] = mapped_column(Text)
    token_type_hint: Mapped[str] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class WebhookDelivery(Base):
    """One webhook notification to the host application, retried with backoff until delivered."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=new_id)
    #: ``sync.completed``, ``connection.needs_reauth``, ``connection.misbound``.
    event_type: Mapped[str] = mapped_column(String(64))
    connection_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    user_id: Mapped[str | None] = mapped_column(String(255))
    #: The exact JSON bytes that are signed and sent (no patient data, no tokens).
    payload: Mapped[bytes] = mapped_column(LargeBinary())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), index=True)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


__all__ = [
    "AUTH_METHOD_NAMES",
    "CONNECTION_STATUSES",
    "DELETED_REASONS",
    "RUN_OUTCOMES",
    "TYPE_SYNC_STATUSES",
    "VENDORS",
    "Base",
    "ConnectLink",
    "Connection",
    "Credential",
    "Event",
    "LaunchAttempt",
    "LaunchFailure",
    "PendingRevocation",
    "Resource",
    "ResourceCursor",
    "ResourceHistory",
    "SyncRun",
    "SyncState",
    "Tenant",
    "WebhookDelivery",
    "new_id",
]
