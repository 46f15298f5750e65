"""What the connect page and its type-ahead share: who may search, and one page of results.

The page and the JSON search read the query, the page number and the patient's own providers
the same way and call the same search, so what the type-ahead offers is what the page lists.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from aiohttp import web

from syncsvc.connect.links import peek_connect_link
from syncsvc.directory.picker import (
    MAX_QUERY_LENGTH,
    ConnectedProvider,
    find_providers,
    is_name_prefix,
)
from syncsvc.directory.picker_results import PickerResults, Status, picker_results
from syncsvc.errors import LaunchError
from syncsvc.web.cookies import patient_session
from syncsvc.web.keys import SERVICES, SIGNER

#: Paging stops here: a patient who has not found their provider after this many pages should
#: type more, and a deep OFFSET costs the database.
MAX_PAGE = 50
#: The type-ahead searches once this many letters or digits are typed (the form at any length).
TYPEAHEAD_MIN_LENGTH = 2


def query_of(request: web.Request) -> str:
    """The search query of a request, trimmed and cut to its longest."""
    return request.query.get("q", "").strip()[:MAX_QUERY_LENGTH]


def page_of(request: web.Request) -> int:
    """The page number of a request, 1 to :data:`MAX_PAGE` (anything else is page 1)."""
    try:
        page = int(request.query.get("page", "1"))
    except ValueError:
        return 1
    return min(max(page, 1), MAX_PAGE)


async def search_view(request: web.Request, connected: list[ConnectedProvider]) -> PickerResults:
    """The page of providers the request's query and page number find, the patient's own
    marked with their state."""
    query, page = query_of(request), page_of(request)
    found = await find_providers(request.app[SERVICES].sessionmaker, query, page=page)
    return picker_results(
        found,
        query=query,
        page=page,
        name_prefix=is_name_prefix(query),
        has_more=found.has_more and page < MAX_PAGE,
        status_of=statuses(connected),
    )


def statuses(connected: list[ConnectedProvider]) -> dict[str, Status]:
    """The patient's own providers' states, by tenant id."""
    return {item.tenant.id: Status(item.title, item.tone) for item in connected}


@dataclass(frozen=True)
class PickerAccess:
    """Who a type-ahead search is for."""

    user_id: str
    #: The rate limiter's key: the link's id, or the session's user.
    rate_key: str


@dataclass(frozen=True)
class Refusal:
    """Why a type-ahead search is refused: its HTTP status, reason and sentence."""

    status: int
    reason: str
    detail: str


async def picker_access(request: web.Request) -> PickerAccess | Refusal:
    """The connect link or patient session that authorises a search, as the page checks it."""
    token = request.query.get("link")
    if token:
        try:
            async with request.app[SERVICES].sessionmaker() as session:
                claims = await peek_connect_link(
                    session, request.app[SIGNER], token, now=dt.datetime.now(dt.UTC)
                )
        except LaunchError as exc:
            return Refusal(403, exc.reason, exc.message)
        user_id, tenant, key = claims.user_id, claims.tenant, f"link:{claims.link_id}"
    else:
        patient = patient_session(request)
        if patient is None:
            return Refusal(
                401, "session_missing", "Searching needs the link the application gave you."
            )
        user_id, tenant, key = patient.user_id, patient.tenant, f"user:{patient.user_id}"
    if tenant is not None:
        return Refusal(403, "link_for_one_provider", "This link is for one provider only.")
    return PickerAccess(user_id=user_id, rate_key=key)
