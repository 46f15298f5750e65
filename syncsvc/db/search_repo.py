"""The provider search: a tenant's search terms, and finding tenants by what a patient types.

Terms and queries are folded alike (accents dropped, lower case, words of letters and digits), so
"Abbév" finds "Abbeville". Every word typed must match the start of a word of the tenant's name,
aliases or place; results come by relevance, name over aliases over place: SQLite ranks with
FTS5's bm25 (weighted by column), PostgreSQL finds with its full-text index and orders by where
the first word matched, then the shorter name (see the provider search migration). A query
of only one- or two-letter words would match most of a directory as prefixes; it matches the start
of the name instead, alphabetically, from an ordered index (so its cost is a page, not the
directory). Delisted tenants are not found: their terms are emptied.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db.models.connections import Connection, Credential, Tenant
from syncsvc.db.models.directory import TenantSearch

#: At most this many words of a query are used (a pasted paragraph is not a search).
MAX_QUERY_WORDS = 8
#: A query whose words are all shorter than this is a name prefix (see the module docstring).
MIN_WORD_LENGTH = 3
_WORD = re.compile(r"[a-z0-9]+")


def fold(value: str) -> list[str]:
    """The words of ``value``, lower-case ASCII without accents."""
    plain = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode("ascii")
    return _WORD.findall(plain.lower())


def _terms(values: Iterable[str | None]) -> str:
    return " ".join(word for value in values if value for word in fold(value))


def search_columns(
    *,
    display_name: str,
    brand_name: str | None = None,
    aliases: Iterable[str] = (),
    portal_name: str | None = None,
    street: str | None = None,
    city: str | None = None,
    state: str | None = None,
    postal_code: str | None = None,
) -> dict[str, str]:
    """The ``tenant_search`` columns of a tenant described so."""
    names = _terms((display_name, brand_name))
    alias_terms = _terms((*aliases, portal_name))
    place = _terms((street, city, state, postal_code))
    return {
        "name_terms": names,
        "alias_terms": alias_terms,
        "place_terms": place,
        "document": " ".join(t for t in (names, alias_terms, place) if t),
    }


async def index_tenant(session: AsyncSession, tenant: Tenant) -> None:
    """Write ``tenant``'s search terms from its columns (insert or replace); a delisted
    tenant's are empty, so the index never finds it."""
    columns = search_columns(
        display_name=tenant.display_name,
        brand_name=tenant.brand_name,
        aliases=tenant.aliases or (),
        portal_name=tenant.portal_name,
        street=tenant.street,
        city=tenant.city,
        state=tenant.state,
        postal_code=tenant.postal_code,
    )
    if tenant.delisted_at is not None:
        columns = dict.fromkeys(columns, "")
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
    found = await session.execute(
        select(Tenant.id, Tenant.name).where(
            Tenant.directory == directory, Tenant.delisted_at.is_(None)
        )
    )
    gone = [tenant_id for tenant_id, name in found if name not in names]
    unsearchable = dict.fromkeys(("name_terms", "alias_terms", "place_terms", "document"), "")
    for start in range(0, len(gone), 500):
        batch = gone[start : start + 500]
        await session.execute(
            update(Tenant).where(Tenant.id.in_(batch)).values(delisted_at=now, updated_at=now)
        )
        await session.execute(
            update(TenantSearch).where(TenantSearch.tenant_id.in_(batch)).values(**unsearchable)
        )
    return len(gone)


def is_short(words: list[str]) -> bool:
    """Whether folded ``words`` make a name-prefix query (every word under three letters)."""
    return bool(words) and all(len(word) < MIN_WORD_LENGTH for word in words)


def _successor(prefix: str) -> str:
    """The least string after every string starting with ``prefix`` (folded terms are ASCII)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


#: Index rows a short query of several words reads at most before filtering by its other words.
PREFIX_SCAN = 1_000
_SQLITE_PREFIX = "s.name_terms"
_POSTGRES_PREFIX = 'substr(s.name_terms, 1, 64) COLLATE "C"'
#: Names starting with ``:low``, alphabetically: one range of the prefix index, read in its
#: order (no sort) and cut to the page; a query's further words are word prefixes later in the
#: name (``:pattern``), looked for in the range's first rows only. The key is the migration's
#: indexed expression.
_NAME_PREFIX = {
    sqlite: text(
        "SELECT tenant_id FROM ("  # noqa: S608 - constant
        f"SELECT s.tenant_id, s.name_terms, s.id, {key} AS name_key FROM tenant_search s "
        f"WHERE {key} >= :low AND {key} < :high ORDER BY {key}, s.id LIMIT :scan"
        ") AS r WHERE r.name_terms LIKE :pattern ORDER BY r.name_key, r.id "
        "LIMIT :limit OFFSET :offset"
    )
    for sqlite, key in ((True, _SQLITE_PREFIX), (False, _POSTGRES_PREFIX))
}


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
    sqlite = session.get_bind().dialect.name == "sqlite"
    if is_short(words):
        # One word reads the page's rows of the range; more words at most PREFIX_SCAN of them.
        statement = _NAME_PREFIX[sqlite]
        params["low"] = words[0]
        params["high"] = _successor(words[0])
        params["pattern"] = "% ".join(words) + "%"
        params["scan"] = (page * per_page + 1) if len(words) == 1 else PREFIX_SCAN
    elif sqlite:
        # Ranked and cut to the page inside the FTS table, joined only for the page's rows:
        # a city or a short prefix matches thousands.
        statement = text(
            "SELECT s.tenant_id FROM ("
            "SELECT rowid AS id, bm25(tenant_search_fts, 10.0, 4.0, 1.0) AS score "
            "FROM tenant_search_fts WHERE tenant_search_fts MATCH :match "
            "ORDER BY score, rowid LIMIT :limit OFFSET :offset"
            ") AS f JOIN tenant_search s ON s.id = f.id ORDER BY f.score, f.id"
        )
        # Words are letters and digits only, so quoting them cannot change the query's syntax.
        params["match"] = " ".join(f'"{word}"*' for word in words)
    else:
        # Ranked by where the words matched (name, then alias, then place), then by the
        # shorter name: plain string tests on the rows the index found, cheap at thousands.
        statement = text(
            "SELECT s.tenant_id FROM tenant_search s "
            "WHERE to_tsvector('simple'::regconfig, s.document) "
            "@@ to_tsquery('simple'::regconfig, :match) "
            "ORDER BY CASE WHEN (' ' || s.name_terms) LIKE :word THEN 0 "
            "WHEN (' ' || s.alias_terms) LIKE :word THEN 1 ELSE 2 END, "
            "length(s.name_terms), s.name_terms, s.id "
            "LIMIT :limit OFFSET :offset"
        )
        params["word"] = f"% {words[0]}%"
        params["match"] = " & ".join(f"{word}:*" for word in words)
    ids: list[str] = list((await session.execute(statement, params)).scalars())
    has_more = len(ids) > per_page
    ids = ids[:per_page]
    found = {t.id: t for t in await session.scalars(select(Tenant).where(Tenant.id.in_(ids)))}
    return SearchPage(tuple(found[i] for i in ids if i in found), has_more=has_more)


@dataclass(frozen=True)
class OwnProvider:
    """A tenant the patient has connected, with what the headline of its state needs."""

    tenant: Tenant
    connection: Connection
    has_refresh_token: bool
    access_expires_at: dt.datetime | None


async def providers_of(session: AsyncSession, user_id: str) -> list[OwnProvider]:
    """The tenants ``user_id`` has connected, each with its newest connection: one query."""
    rows = await session.execute(
        select(
            Connection,
            Tenant,
            Credential.refresh_token_enc.is_not(None),
            Credential.access_expires_at,
        )
        .join(Tenant, Tenant.id == Connection.tenant_id)
        .outerjoin(Credential, Credential.connection_id == Connection.id)
        .where(Connection.user_id == user_id)
        .order_by(Connection.created_at.desc(), Connection.id.desc())
    )
    found: dict[str, OwnProvider] = {}
    for connection, tenant, has_refresh, expires in rows:
        if tenant.id not in found:
            found[tenant.id] = OwnProvider(tenant, connection, bool(has_refresh), expires)
    return list(found.values())
