"""Tenants, patients' connections at them, their credentials, and the launch that makes one."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, get_args

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Computed,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from syncsvc.db.base import Base, UTCDateTime
from syncsvc.db.columns import ID_LENGTH, URL_LENGTH, in_check, new_id
from syncsvc.vocabulary import CONNECTION_STATUSES

Vendor = Literal["cerner", "epic", "generic"]
AuthMethodName = Literal["public", "client_secret_basic", "client_secret_post", "private_key_jwt"]
ScopeSyntaxName = Literal["auto", "v1", "v2"]
VENDORS: tuple[str, ...] = get_args(Vendor)
SCOPE_SYNTAXES: tuple[str, ...] = get_args(ScopeSyntaxName)
AUTH_METHOD_NAMES: tuple[str, ...] = get_args(AuthMethodName)


#: ``least(next_refresh_at, next_sync_at)`` ignoring NULLs, spelled the same on both databases.
_EARLIER_SQL = (
    "CASE WHEN next_refresh_at IS NULL THEN next_sync_at "
    "WHEN next_sync_at IS NULL OR next_refresh_at < next_sync_at THEN next_refresh_at "
    "ELSE next_sync_at END"
)
#: When the connection is next claimable: the earlier of its refresh and sync, but not before
#: its back-off ends (NULL: nothing scheduled).
NEXT_DUE_SQL = (
    f"CASE WHEN ({_EARLIER_SQL}) IS NULL THEN NULL "
    f"WHEN backoff_until > ({_EARLIER_SQL}) THEN backoff_until "
    f"ELSE ({_EARLIER_SQL}) END"
)
#: The claim index holds only the connections a claim may take. Spelled as a literal in the
#: claim too: a planner uses a partial index only where it can see the query implies this.
ACTIVE_SQL = "status = 'active'"


class Tenant(Base):
    """One EHR FHIR base with syncsvc's client registration there."""

    __tablename__ = "tenants"
    __table_args__ = (
        CheckConstraint(in_check("vendor", VENDORS), name="vendor"),
        CheckConstraint(in_check("auth_method", AUTH_METHOD_NAMES), name="auth_method"),
        CheckConstraint(in_check("scope_syntax", SCOPE_SYNTAXES), name="scope_syntax"),
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
    #: The SMART scope syntax asked in: ``auto`` (v2 where the server advertises
    #: ``permission-v2``, else v1), or the operator's ``v1`` / ``v2``.
    scope_syntax: Mapped[str] = mapped_column(String(4), default="auto", server_default="auto")
    #: What a patient recognises the tenant by, as its published directory gives it (see
    #: :mod:`syncsvc.db.models.directory` for the search over these).
    street: Mapped[str | None] = mapped_column(String(200))
    city: Mapped[str | None] = mapped_column(String(100))
    state: Mapped[str | None] = mapped_column(String(50))
    postal_code: Mapped[str | None] = mapped_column(String(20))
    aliases: Mapped[list[str]] = mapped_column(JSON, default=list)
    brand_name: Mapped[str | None] = mapped_column(String(200))
    portal_name: Mapped[str | None] = mapped_column(String(200))
    #: The directory a ``tenants import`` took the tenant from (None: registered by hand).
    directory: Mapped[str | None] = mapped_column(String(64))
    #: When a re-import of its directory no longer listed it; kept (connections may use it),
    #: left out of the provider search.
    delisted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    #: The brand's logo (``logos.sha256``, no foreign key: a logo row is shared and pruned by
    #: the import) fetched and checked at import, and the https URL it came from (``data:`` and a
    #: digest if the directory embedded it); a re-import that cannot fetch the same URL keeps it.
    logo_sha256: Mapped[str | None] = mapped_column(String(64))
    logo_url: Mapped[str | None] = mapped_column(String(URL_LENGTH))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class Connection(Base):
    """A patient's grant at one tenant, with the exact binding it was issued for."""

    __tablename__ = "connections"
    __table_args__ = (
        UniqueConstraint("tenant_id", "user_id", "patient_id"),
        CheckConstraint(in_check("status", CONNECTION_STATUSES), name="status"),
        # The scheduler's claim walks this index in due order and stops after one batch, so
        # claiming stays cheap however many connections are not due (or not active). The only
        # index on a due time: each one more is one more entry written by every reschedule.
        Index(
            "ix_connections_due",
            "next_due_at",
            "id",
            postgresql_where=text(ACTIVE_SQL),
            sqlite_where=text(ACTIVE_SQL),
        ),
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
    next_refresh_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    next_sync_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    #: The earlier of the two but not before ``backoff_until``, kept by the database itself (a
    #: stored generated column): the connection is due for a claim once this has passed.
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
