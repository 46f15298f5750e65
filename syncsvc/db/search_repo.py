"""The provider search: a tenant's search terms, and finding tenants by what a patient types.

Terms and queries are folded alike (accents dropped, lower case, words of letters and digits), so
"Abbév" finds "Abbeville". Every word typed must match the start of a word of the tenant's name,
aliases or place; results come by relevance (name over aliases over place), then by name.
SQLite ranks with FTS5's bm25, PostgreSQL with ``ts_rank`` over its full-text index (see the
provider search migration). Delisted tenants are not found.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db.models.connections import Tenant
from syncsvc.db.models.directory import TenantSearch

#: At most this many words of a query are used (a pasted paragraph is not a search).
MAX_QUERY_WORDS = 8
_WORD = re.compile(r"[a-z0-9]+")


def fold(value: str) -> list[str]:
    """The words of ``value``, lower-case ASCII without accents."""
    plain = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode("ascii")
    return _WORD.findall(plain.lower())


def _terms(values: Iterable[str | None]) -> str:
    return " ".join(word for value in values if value for word in fold(value))


async def index_tenant(session: AsyncSession, tenant: Tenant) -> None:
    """Write ``tenant``'s search terms from its columns (insert or replace)."""
    names = _terms((tenant.display_name, tenant.brand_name))
    aliases = _terms((*(tenant.aliases or ()), tenant.portal_name))
    place = _terms((tenant.street, tenant.city, tenant.state, tenant.postal_code))
    columns = {
        "name_terms": names,
        "alias_terms": aliases,
        "place_terms": place,
        "document": " ".join(t for t in (names, aliases, place) if t),
    }
    row = await session.scalar(select(TenantSearch).where(TenantSearch.tenant_id == tenant.id))
    if row is None:
        session.add(TenantSearch(tenant_id=tenant.id, **columns))
    else:
        for name, value in columns.items():
            setattr(row, name, value)
    await session.flush()


async def delist_others(
    session: AsyncSession, directory: str, listed: Iterable[str], *, now: dt.datetime
) -> int:
    """Mark tenants of ``directory`` not named in ``listed`` as delisted; how many were marked.

    Never deletes: connections may still use them.
    """
    names = set(listed)
    found = await session.scalars(
        select(Tenant.name).where(Tenant.directory == directory, Tenant.delisted_at.is_(None))
    )
    gone = [name for name in found if name not in names]
    for start in range(0, len(gone), 500):
        await session.execute(
            update(Tenant)
            .where(Tenant.name.in_(gone[start : start + 500]))
            .values(delisted_at=now, updated_at=now)
        )
    return len(gone)


@dataclass(frozen=True)
class SearchPage:
    """One page of tenants found, best first, and whether another page follows."""

    tenants: tuple[Tenant, ...]
    has_more: bool


async def listed_tenants(session: AsyncSession, *, limit: int) -> list[Tenant]:
    """Up to ``limit`` listed tenants by display name (a small directory shown whole)."""
    query = (
        select(Tenant)
        .where(Tenant.delisted_at.is_(None))
        .order_by(Tenant.display_name, Tenant.id)
        .limit(limit)
    )
    return list(await session.scalars(query))


async def search_tenants(
    session: AsyncSession, query: str, *, page: int = 1, per_page: int = 20
) -> SearchPage:
    """Listed tenants matching every word of ``query`` as a word prefix, by relevance."""
    words = fold(query)[:MAX_QUERY_WORDS]
    if not words or page < 1:
        return SearchPage((), has_more=False)
    params: dict[str, object] = {"limit": per_page + 1, "offset": (page - 1) * per_page}
    if session.get_bind().dialect.name == "sqlite":
        statement = text(
            "SELECT s.tenant_id FROM tenant_search_fts f "
            "JOIN tenant_search s ON s.id = f.rowid "
            "JOIN tenants t ON t.id = s.tenant_id "
            "WHERE tenant_search_fts MATCH :match AND t.delisted_at IS NULL "
            "ORDER BY bm25(tenant_search_fts, 10.0, 4.0, 1.0), t.display_name, t.id "
            "LIMIT :limit OFFSET :offset"
        )
        # Words are letters and digits only, so quoting them cannot change the query's syntax.
        params["match"] = " ".join(f'"{word}"*' for word in words)
    else:
        statement = text(
            "SELECT s.tenant_id FROM tenant_search s JOIN tenants t ON t.id = s.tenant_id, "
            "to_tsquery('simple'::regconfig, :match) AS q "
            "WHERE to_tsvector('simple'::regconfig, s.document) @@ q "
            "AND t.delisted_at IS NULL "
            "ORDER BY ts_rank("
            "setweight(to_tsvector('simple'::regconfig, s.name_terms), 'A') || "
            "setweight(to_tsvector('simple'::regconfig, s.alias_terms), 'B') || "
            "setweight(to_tsvector('simple'::regconfig, s.place_terms), 'D'), q) DESC, "
            "t.display_name, t.id "
            "LIMIT :limit OFFSET :offset"
        )
        params["match"] = " & ".join(f"{word}:*" for word in words)
    ids: list[str] = list((await session.execute(statement, params)).scalars())
    has_more = len(ids) > per_page
    ids = ids[:per_page]
    found = {t.id: t for t in await session.scalars(select(Tenant).where(Tenant.id.in_(ids)))}
    return SearchPage(tuple(found[i] for i in ids if i in found), has_more=has_more)
