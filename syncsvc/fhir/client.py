"""A FHIR R4 client bound to one base URL and one access token.

The binding is the security boundary: the bearer token goes only to URLs under the exact base it
was issued for (same scheme, host, port and path prefix). Paging ``next`` links are opaque and
followed as given, but only when they pass that check; a ``next`` that leaves the base stops the
search instead (Cerner-style tenants are told apart by path, so even the same host is not enough).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, TypeVar
from urllib.parse import unquote, urlencode, urlsplit

import aiohttp
import orjson
from yarl import URL

from syncsvc.errors import SyncsvcError, Transient
from syncsvc.http import BodyTooLarge, read_body
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


@dataclass
class Page:
    """One searchset page."""

    url: str
    resources: list[dict[str, Any]]
    next_url: str | None
    #: The Bundle's own ``self`` link, which a looping server repeats as ``next``.
    self_url: str | None = None


class SearchPage(Protocol):
    """What paging needs of a decoded page: where it came from and where it points."""

    @property
    def url(self) -> str: ...

    @property
    def next_url(self) -> str | None: ...

    @property
    def self_url(self) -> str | None: ...


P = TypeVar("P", bound=SearchPage)
#: Turns a fetched page (its URL and body) into the caller's page.
Decoder: TypeAlias = Callable[[str, bytes], Awaitable[P]]


#: FHIR's id datatype (R4 2.24.0.2): also keeps path syntax out of URLs built from EHR data.
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")


def is_fhir_id(value: str) -> bool:
    """Whether ``value`` is a valid FHIR id (and no dot segment)."""
    return bool(FHIR_ID.match(value)) and value not in (".", "..")


def _ambiguous_path(raw_path: str) -> bool:
    # A dot segment (plain or percent-encoded) or an encoded slash makes the path the HTTP client
    # sends differ from the one checked here (it resolves them), so such URLs are refused.
    lowered = raw_path.lower()
    if "%2f" in lowered or "%5c" in lowered or "\\" in raw_path:
        return True
    return any(unquote(segment) in (".", "..") for segment in raw_path.split("/"))


def is_under_base(url: str, base: str) -> bool:
    """Whether ``url`` is under ``base``: same scheme, host and port, path below the base path.

    The comparison is made on the URL as the HTTP client will send it (normalised by yarl), and
    URLs whose path could be read two ways are refused outright.
    """
    try:
        target, root = URL(url), URL(base)
    except (ValueError, TypeError):
        return False
    if not target.is_absolute() or target.user or target.password:
        return False
    if _ambiguous_path(urlsplit(url).path):
        return False
    if (target.scheme.lower(), target.host, target.explicit_port or target.port) != (
        root.scheme.lower(),
        root.host,
        root.explicit_port or root.port,
    ):
        return False
    base_path = root.path.rstrip("/")
    return target.path == base_path or target.path.startswith(base_path + "/")


class FhirClient:
    """Requests against one FHIR base with one bearer token."""

    def __init__(self, http: aiohttp.ClientSession, base: str, access_token: str) -> None:
        self._http = http
        self.base = base.rstrip("/")
        self._token = access_token
        self.requests = 0
        self.bytes_received = 0

    def use_token(self, access_token: str) -> None:
        """Switch to a refreshed access token of the same grant."""
        self._token = access_token

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}", "Accept": FHIR_JSON}

    async def get(self, url: str, params: Mapping[str, str] | None = None) -> tuple[Any, int]:
        """GET a URL under the base; the parsed JSON and its size. Raises on any failure."""
        body = await self.get_bytes(url, params)
        return parse_json(body), len(body)

    async def get_bytes(self, url: str, params: Mapping[str, str] | None = None) -> bytes:
        """GET a URL under the base; the body as received. Raises on any failure."""
        if not is_under_base(url, self.base):
            raise ForeignNextLink
        return await self.fetch_bytes(url, params)

    async def fetch_bytes(self, url: str, params: Mapping[str, str] | None = None) -> bytes:
        """One GET of ``url`` (the caller has checked it is under the base), unparsed."""
        self.requests += 1
        try:
            async with self._http.get(
                url, params=params, headers=self._headers(), allow_redirects=False
            ) as response:
                try:
                    body = await read_body(response.content, MAX_PAGE_BYTES)
                except BodyTooLarge as exc:
                    raise Transient("The EHR answered with an oversized page") from exc
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
            raise Transient(f"The EHR could not be reached ({type(exc).__name__})") from exc
        self.bytes_received += len(body)
        return body

    async def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        """Read one resource by id (ids come from the EHR: they are checked before use)."""
        if not RESOURCE_TYPE.match(resource_type) or not is_fhir_id(resource_id):
            raise Transient(f"Refusing to read a {resource_type[:40]} with a malformed id")
        doc, _ = await self.get(f"{self.base}/{resource_type}/{resource_id}")
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
            body = await self.get_bytes(url, query)
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


def _with_query(url: str, params: Mapping[str, str]) -> str:
    return f"{url}?{urlencode(params)}"


def parse_json(body: bytes) -> Any:
    """An EHR's JSON answer, parsed; malformed JSON is a transient failure of the EHR."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Transient("The EHR answered with malformed JSON") from exc


def parse_bundle(url: str, body: bytes) -> Page:
    """A searchset page from its URL and body: the ``match`` entries' resources and the links."""
    doc = parse_json(body)
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        raise Transient("The EHR answered a search with something other than a Bundle")
    resources: list[dict[str, Any]] = []
    entries = doc.get("entry") or []
    if not isinstance(entries, list):
        raise Transient("The EHR's Bundle.entry is not a list")
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict):
            search = entry.get("search")
            # Only ``match`` entries are results; an entry without a usable mode counts as one.
            mode = search.get("mode", "match") if isinstance(search, dict) else "match"
            if mode == "match":
                resources.append(resource)
    links: dict[str, str] = {}
    raw_links = doc.get("link")
    for link in raw_links if isinstance(raw_links, list) else []:
        if isinstance(link, dict) and isinstance(link.get("url"), str) and link["url"]:
            links[str(link.get("relation"))] = link["url"]
    return Page(
        url=url,
        resources=resources,
        next_url=links.get("next"),
        self_url=links.get("self"),
    )
