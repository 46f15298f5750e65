"""The event log of connections, and what is still owed to others: revocations, webhooks."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from syncsvc.db.base import Base, UTCDateTime
from syncsvc.db.columns import ID_LENGTH, RESOURCE_TYPE_LENGTH, URL_LENGTH, new_id


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
