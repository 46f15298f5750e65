"""The patient's provider picker: finding tenants by what a patient types, and keeping what the
search needs from an imported directory (see :mod:`syncsvc.db.search_repo` for the matching)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db import search_repo
from syncsvc.db.models.connections import Tenant
from syncsvc.db.search_repo import SearchPage
from syncsvc.directory.endpoint_import import ImportedEndpoint
from syncsvc.directory.tenants import Listing
from syncsvc.sync.explain import headline
from syncsvc.sync.grant_states import grant_facts

#: Results per page of the provider search.
PAGE_SIZE = 20
#: Longer queries are cut here: nobody types more to find a provider.
MAX_QUERY_LENGTH = 200


def is_name_prefix(query: str) -> bool:
    """Whether ``query`` is short enough to find only names that start with it (one or two
    letters a word: see :mod:`syncsvc.db.search_repo`)."""
    return search_repo.is_short(
        search_repo.fold(query[:MAX_QUERY_LENGTH])[: search_repo.MAX_QUERY_WORDS]
    )


def listing_of(endpoint: ImportedEndpoint, directory: str) -> Listing:
    """What the provider search keeps of an imported endpoint."""
    address = endpoint.address
    return Listing(
        directory=directory,
        street=address.street if address else None,
        city=address.city if address else None,
        state=address.state if address else None,
        postal_code=address.postal_code if address else None,
        aliases=endpoint.aliases,
        brand_name=endpoint.brand_name,
        portal_name=endpoint.portal_name,
    )


async def delist_missing(
    sessionmaker: async_sessionmaker[AsyncSession],
    directory: str,
    listed: list[str],
    *,
    now: dt.datetime,
) -> int:
    """Mark the tenants ``directory`` listed before but not now; how many were marked."""
    async with sessionmaker.begin() as session:
        return await search_repo.delist_others(session, directory, listed, now=now)


async def find_providers(
    sessionmaker: async_sessionmaker[AsyncSession], query: str, *, page: int = 1
) -> SearchPage:
    """One page of listed providers matching ``query``, best first.

    Without a query: every listed provider when there are at most a page of them (a small
    deployment needs no search), else none with ``has_more`` (a directory of thousands is
    searched, not listed).
    """
    async with sessionmaker() as session:
        if not query.strip():
            few = await search_repo.listed_tenants(session, limit=PAGE_SIZE + 1)
            if len(few) > PAGE_SIZE:
                return SearchPage((), has_more=True)  # more than a page: search first
            return SearchPage(tuple(few), has_more=False)
        return await search_repo.search_tenants(
            session, query[:MAX_QUERY_LENGTH], page=page, per_page=PAGE_SIZE
        )


@dataclass(frozen=True)
class ConnectedProvider:
    """A provider the patient has connected, with its state's title and tone (as every other
    surface words it)."""

    tenant: Tenant
    title: str
    tone: str


async def connected_providers(
    sessionmaker: async_sessionmaker[AsyncSession], user_id: str
) -> list[ConnectedProvider]:
    """The patient's providers, newest connection first, one per provider (one query)."""
    async with sessionmaker() as session:
        found = await search_repo.providers_of(session, user_id)
    providers = []
    for own in found:
        facts = grant_facts(
            own.connection,
            own.tenant,
            has_refresh_token=own.has_refresh_token,
            access_expires_at=own.access_expires_at,
            # The headline reads no per-type rows (see syncsvc.sync.explain.headline).
            states={},
            counts={},
        )
        title, tone = headline(facts)
        providers.append(ConnectedProvider(own.tenant, title, tone))
    return providers
