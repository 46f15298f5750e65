"""A FHIR R4 client bound to one base URL and one access token.

The binding is the security boundary: the bearer token goes only to URLs under the exact base it
was issued for (same scheme, host, port and path prefix). Paging ``next`` links are opaque and
followed as given, but only when they pass that check; a ``next`` that leaves the base stops the
search instead (Cerner-style tenants are told apart by path, so even the same host is not enough).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeAlias, TypeVar
from urllib.parse import urlencode

import aiohttp

from syncsvc.errors import SyncsvcError, Transient
from syncsvc.fhir.bundle import parse_json
from syncsvc.fhir.ids import RESOURCE_TYPE, is_fhir_id
from syncsvc.fhir.urls import is_under_base
from syncsvc.http import BodyTooLarge, describe_network_error, read_body
from syncsvc.smart.vendor_errors import FhirFailure, classify_fhir_failure

FHIR_JSON = "application/fhir+json"
MAX_PAGE_BYTES = 64 * 1024 * 1024
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


class SearchPage(Protocol):
    """What paging needs of a decoded page: where it came from and where it points."""

    @property
    def url(self) -> str: ...

    @property
    def next_url(self) -> str | None: ...

    @property
    def self_url(self) -> str | None: ...


class RequestMeter(Protocol):
    """Hears about each request: its resource type, its HTTP status (or ``timeout`` or
    ``network`` when none came) and its time in seconds (``syncsvc.work_metrics.TenantMeter``)."""

    def request(self, resource_type: str, status: str, seconds: float) -> None: ...


P = TypeVar("P", bound=SearchPage)
#: Turns a fetched page (its URL and body) into the caller's page.
Decoder: TypeAlias = Callable[[str, bytes], Awaitable[P]]


class FhirClient:
    """Requests against one FHIR base with one bearer token."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base: str,
        access_token: str,
        *,
        meter: RequestMeter | None = None,
    ) -> None:
        self._http = http
        self.base = base.rstrip("/")
        self._token = access_token
        self.requests = 0
        self.bytes_received = 0
        self.meter = meter

    def use_token(self, access_token: str) -> None:
        """Switch to a refreshed access token of the same grant."""
        self._token = access_token

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}", "Accept": FHIR_JSON}

    async def get(
        self, url: str, params: Mapping[str, str] | None = None, *, resource_type: str = ""
    ) -> tuple[Any, int]:
        """GET a URL under the base; the parsed JSON and its size. Raises on any failure."""
        body = await self.get_bytes(url, params, resource_type=resource_type)
        return parse_json(body), len(body)

    async def get_bytes(
        self, url: str, params: Mapping[str, str] | None = None, *, resource_type: str = ""
    ) -> bytes:
        """GET a URL under the base; the body as received. Raises on any failure.

        ``resource_type`` names what is asked for, for the meter (a ``next`` link says nothing).
        """
        if not is_under_base(url, self.base):
            raise ForeignNextLink
        return await self.fetch_bytes(url, params, resource_type=resource_type)

    async def fetch_bytes(
        self, url: str, params: Mapping[str, str] | None = None, *, resource_type: str = ""
    ) -> bytes:
        """One GET of ``url`` (the caller has checked it is under the base), unparsed."""
        self.requests += 1
        started = time.perf_counter()
        status = "network"
        try:
            async with self._http.get(
                url, params=params, headers=self._headers(), allow_redirects=False
            ) as response:
                try:
                    body = await read_body(response.content, MAX_PAGE_BYTES)
                except BodyTooLarge as exc:
                    status = str(response.status)
                    raise Transient("The EHR answered with an oversized page") from exc
                status = str(response.status)
                if not 200 <= response.status < 300:
                    raise FhirRequestError(
                        classify_fhir_failure(
                            response.status,
                            response.headers.get("WWW-Authenticate"),
                            response.headers.get("Retry-After"),
                            body,
                        )
                    )
        except (aiohttp.ClientError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                status = "timeout"
            raise RequestTransient(
                f"The EHR could not be reached ({describe_network_error(exc)})",
                reason=_transport(exc),
            ) from exc
        finally:
            if self.meter is not None:
                self.meter.request(resource_type, status, time.perf_counter() - started)
        self.bytes_received += len(body)
        return body

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
        self, resource_type: str, params: Mapping[str, str], decode: Decoder[P]
    ) -> AsyncIterator[P]:
        """Pages of a search, following ``next`` links only while they stay under the base.

        ``decode`` turns each page's URL and body into the caller's page (it may hand the work to
        another process); its links decide where paging goes next.
        """
        url: str | None = f"{self.base}/{resource_type}"
        query: Mapping[str, str] | None = params
        seen: set[str] = set()
        for _ in range(MAX_PAGES_PER_SEARCH):
            if url is None:
                return
            body = await self.get_bytes(url, query, resource_type=resource_type)
            page = await decode(url if query is None else _with_query(url, query), body)
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
