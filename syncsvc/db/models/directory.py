"""The provider search (one row of normalised search terms per tenant) and brand logos.

The terms are lower-case ASCII (accents folded in Python, so both databases match alike). The
index over them is database-specific and lives in the migration only: an FTS5 table
``tenant_search_fts`` kept in step by triggers on SQLite, a GIN full-text index
``ix_tenant_search_document_fts`` on PostgreSQL (:data:`syncsvc.db.migrate.HAND_MADE` keeps
autogenerate from comparing them).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from syncsvc.db.base import Base, UTCDateTime
from syncsvc.db.columns import ID_LENGTH


class TenantSearch(Base):
    """What a patient may type to find a tenant, by weight: name, then aliases, then place."""

    __tablename__ = "tenant_search"

    #: An integer key that never changes: SQLite's FTS5 table is keyed by it.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    tenant_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("tenants.id", ondelete="CASCADE"), unique=True
    )
    #: Display name and brand name.
    name_terms: Mapped[str] = mapped_column(Text, default="")
    #: Aliases and portal name.
    alias_terms: Mapped[str] = mapped_column(Text, default="")
    #: Street, city, state and postal code.
    place_terms: Mapped[str] = mapped_column(Text, default="")
    #: All of the above, which PostgreSQL's full-text index covers.
    document: Mapped[str] = mapped_column(Text, default="")


class Logo(Base):
    """A brand logo fetched and checked at import, stored once however many tenants show it.

    Served by syncsvc from its digest (``GET /logos/{sha256}``), never hot-linked: the patient's
    browser talks to syncsvc only. A logo no tenant shows any more is deleted by the import.
    """

    __tablename__ = "logos"

    #: Hex SHA-256 of ``content``: the same image from many URLs is stored once.
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: One of the allowed image types (PNG, JPEG, WebP, GIF), checked against the bytes.
    content_type: Mapped[str] = mapped_column(String(32))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
