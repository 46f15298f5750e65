"""A FHIR R4 client bound to one base URL and one access token.

The binding is the security boundary: the bearer token goes only to URLs under the exact base it
was issued for (same scheme, host, port and path prefix). Paging ``next`` links are opaque and
followed as given, but only when they pass that check; a ``next`` that leaves the base stops the
search instead (Cerner-style tenants are told apart by path, so even the same host is not enough).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, TypeVar
from urllib.parse import urlencode

import aiohttp

from syncsvc.errors import SyncsvcError, Transient
from syncsvc.fhir.bundle import parse_json
from syncsvc.fhir.ids import RESOURCE_TYPE, is_fhir_id
from syncsvc.fhir.page_limits import PageBudget, PageLimits, PageTooLarge, Reservation
from syncsvc.fhir.urls import is_under_base
from syncsvc.http import BodyTooLarge, describe_network_error, read_body
from syncsvc.smart.vendor_errors import FhirFailure, classify_fhir_failure

FHIR_JSON = "application/fhir+json"
#: A search never follows more pages than this; a real record fits with room to spare and a
#: server that pages forever is stopped.
MAX_PAGES_PER_SEARCH = 10_000


class FhirRequestError(SyncsvcError):
    """A FHIR request failed in a way the caller decides about (see ``failure.kind``)."""

    def __init__(self, failure: FhirFailure) -> None:
        super().__init__(failure.detail, reason=failure.kind)
        self.failure = failure


class RequestTransient(Transient):
    """One request failed in transport: timed out, reset, cut short or never connected.

    ``reason`` is ``timeout``, ``reset`` (the connection dropped, possibly mid-body) or
    ``unreachable`` (no connection could be made to the base: the whole base is down, not one
    type). The message names the exception class only, never a URL or a body.
    """


class ForeignNextLink(SyncsvcError):
    """A paging link pointed outside the connection's base; the token was not sent there."""

    def __init__(self) -> None:
        super().__init__(
            "The EHR's paging link pointed outside this connection's FHIR base; paging stopped "
            "and the token was not sent there.",
            reason="foreign_next_link",
        )


class PagingLoop(SyncsvcError):
    """The server's ``next`` links went in a circle."""

    def __init__(self) -> None:
        super().__init__(
            "The EHR's paging links repeated a page; paging stopped.", reason="paging_loop"
        )


@dataclass(frozen=True, slots=True)
class Fetched:
    """A body as received and the ``Content-Type`` it came with (empty if none)."""

    body: bytes
    content_type: str


class SearchPage(Protocol):
    """What paging needs of a decoded page: where it came from and where it points."""

    @property
    def url(self) -> str: ...

    @property
    def next_url(self) -> str | None: ...

    @property
    def self_url(self) -> str | None: ...


class RequestMeter(Protocol):
    """Hears about each request: its resource type, its HTTP status (:func:`status_label`: a
    known number or ``other``; ``timeout`` or ``network`` when none came) and its time in
    seconds (``syncsvc.work_metrics.TenantMeter``)."""

    def request(self, resource_type: str, status: str, seconds: float) -> None: ...


P = TypeVar("P", bound=SearchPage)
#: Turns a fetched page (its URL and body) into the caller's page.
Decoder: TypeAlias = Callable[[str, bytes], Awaitable[P]]


class FhirClient:
    """Requests against one FHIR base with one bearer token.

    Each body is read under ``limits`` (see ``syncsvc.fhir.page_limits``), with its bytes
    reserved from ``budget`` (the process's page budget) while it is read, and while a search
    page is decoded.
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base: str,
        access_token: str,
        *,
        meter: RequestMeter | None = None,
        limits: PageLimits | None = None,
        budget: PageBudget | None = None,
    ) -> None:
        self._http = http
        self.base = base.rstrip("/")
        self._token = access_token
        self.limits = limits or PageLimits()
        self._budget = budget
        self.requests = 0
        self.bytes_received = 0
        self.meter = meter

    def use_token(self, access_token: str) -> None:
        """Switch to a refreshed access token of the same grant."""
        self._token = access_token

    def _headers(self, accept: str = FHIR_JSON) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}", "Accept": accept}

    async def get(
        self, url: str, params: Mapping[str, str] | None = None, *, resource_type: str = ""
    ) -> tuple[Any, int]:
        """GET a URL under the base; the parsed JSON and its size. Raises on any failure."""
        body = await self.get_bytes(url, params, resource_type=resource_type)
        return parse_json(body), len(body)

    async def get_bytes(
        self,
        url: str,
        params: Mapping[str, str] | None = None,
        *,
        resource_type: str = "",
        held: list[Reservation] | None = None,
    ) -> bytes:
        """GET a URL under the base; the body as received. Raises on any failure.

        ``resource_type`` names what is asked for, for the meter (a ``next`` link says nothing).
        With ``held``, the body's reservation of the page budget is appended to it (the caller
        releases it); otherwise it is released on return.
        """
        if not is_under_base(url, self.base):
            raise ForeignNextLink
        return await self.fetch_bytes(url, params, resource_type=resource_type, held=held)

    async def fetch_bytes(
        self,
        url: str,
        params: Mapping[str, str] | None = None,
        *,
        resource_type: str = "",
        held: list[Reservation] | None = None,
    ) -> bytes:
        """One GET of ``url`` (the caller has checked it is under the base), unparsed.

        Raises PageTooLarge when the body is over the byte cap, before buffering more than the
        cap (an announced length over it is refused without reading).
        """
        fetched = await self.fetch_body(url, params, resource_type=resource_type, held=held)
        return fetched.body

    async def fetch_body(
        self,
        url: str,
        params: Mapping[str, str] | None = None,
        *,
        resource_type: str = "",
        held: list[Reservation] | None = None,
        accept: str = FHIR_JSON,
        cap_for: Callable[[str], int] | None = None,
    ) -> Fetched:
        """:meth:`fetch_bytes` with its ``Content-Type``, asking for ``accept``.

        ``cap_for`` picks the byte cap from the answer's Content-Type (else the page cap): a
        document may be capped apart from pages, and larger when wrapped in base64 JSON.
        """
        self.requests += 1
        started = time.perf_counter()
        status = "network"
        cap = self.limits.max_bytes
        reservation: Reservation | None = None
        try:
            async with self._http.get(
                url, params=params, headers=self._headers(accept), allow_redirects=False
            ) as response:
                status = status_label(response.status)
                content_type = response.headers.get("Content-Type", "")
                if cap_for is not None:
                    cap = cap_for(content_type)
                announced = response.content_length
                if announced is not None and announced > cap:
                    raise PageTooLarge("bytes", cap)
                if self._budget is not None:
                    # A compressed body's length says nothing of what it inflates to.
                    plain = response.headers.get("Content-Encoding", "identity") == "identity"
                    expected = announced if announced is not None and plain else cap
                    reservation = await self._budget.reserve(expected)
                try:
                    body = await read_body(response.content, cap)
                except BodyTooLarge as exc:
                    raise PageTooLarge("bytes", cap) from exc
                if reservation is not None:
                    reservation.shrink(len(body))
                if not 200 <= response.status < 300:
                    raise FhirRequestError(
                        classify_fhir_failure(
                            response.status,
                            response.headers.get("WWW-Authenticate"),
                            response.headers.get("Retry-After"),
                            body,
                        )
                    )
        except BaseException as exc:
            if reservation is not None:
                reservation.release()
            if isinstance(exc, aiohttp.ClientError | TimeoutError):
                if isinstance(exc, TimeoutError):
                    status = "timeout"
                raise RequestTransient(
                    f"The EHR could not be reached ({describe_network_error(exc)})",
                    reason=_transport(exc),
                ) from exc
            raise
        finally:
            if self.meter is not None:
                self.meter.request(resource_type, status, time.perf_counter() - started)
        self.bytes_received += len(body)
        if reservation is not None:
            if held is None:
                reservation.release()
            else:
                held.append(reservation)
        return Fetched(body, content_type)

    async def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        """Read one resource by id (ids come from the EHR: they are checked before use)."""
        if not RESOURCE_TYPE.match(resource_type) or not is_fhir_id(resource_id):
            raise Transient(f"Refusing to read a {resource_type[:40]} with a malformed id")
        doc, _ = await self.get(
            f"{self.base}/{resource_type}/{resource_id}", resource_type=resource_type
        )
        if not isinstance(doc, dict) or doc.get("resourceType") != resource_type:
            raise Transient(f"The EHR answered a {resource_type} read with something else")
        return doc

    async def search(
        self,
        resource_type: str,
        params: Mapping[str, str],
        decode: Decoder[P],
        *,
        path: str | None = None,
    ) -> AsyncIterator[P]:
        """Pages of a search, following ``next`` links only while they stay under the base.

        ``decode`` turns each page's URL and body into the caller's page (it may hand the work to
        another process); its links decide where paging goes next. ``path`` (under the base)
        replaces the type's search URL for an operation that answers a searchset, such as
        ``Patient/{id}/$everything``; ``resource_type`` then only labels its requests.
        """
        url: str | None = f"{self.base}/{path or resource_type}"
        query: Mapping[str, str] | None = params
        seen: set[str] = set()
        for _ in range(MAX_PAGES_PER_SEARCH):
            if url is None:
                return
            held: list[Reservation] = []
            try:
                body = await self.get_bytes(url, query, resource_type=resource_type, held=held)
                page = await decode(url if query is None else _with_query(url, query), body)
            finally:
                # The page's bytes count against the budget until it is decoded.
                for reservation in held:
                    reservation.release()
            del body  # not kept alive by this frame while the caller holds the page
            yield page
            next_url = page.next_url
            if next_url is not None:
                if next_url in seen or next_url in (page.url, page.self_url):
                    raise PagingLoop
                if not is_under_base(next_url, self.base):
                    raise ForeignNextLink
                seen.add(next_url)
            url, query = next_url, None
        raise PagingLoop


#: The HTTP statuses a request is counted under by their own number; any other (an EHR may answer
#: with any three digits) is counted as ``other``, so the label's values stay few.
KNOWN_STATUSES = frozenset(
    {200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 408, 409, 410, 412, 422, 429}
    | {500, 501, 502, 503, 504}
)


def status_label(status: int) -> str:
    """The ``status`` label of a request answered with ``status``: its number, or ``other``."""
    return str(status) if status in KNOWN_STATUSES else "other"


def _transport(exc: aiohttp.ClientError | TimeoutError) -> str:
    """How a request failed in transport: ``timeout``, ``unreachable`` or ``reset``."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        # No connection to the base at all (refused, no route, DNS): not one type's trouble.
        return "unreachable"
    return "reset"


def _with_query(url: str, params: Mapping[str, str]) -> str:
    return f"{url}?{urlencode(params)}"
