"""Brand logos: fetched once at import, checked, and kept for syncsvc to serve.

A directory names its brands' logos by URL. Were the patient's browser to load them, every
directory publisher (or whoever controls a URL in it) would learn who opens the connect page and
when, and could swap the image at will. So ``tenants import`` fetches each logo itself and stores
it (:mod:`syncsvc.db.logo_repo`); patients' pages load ``/logos/{sha256}`` from syncsvc only.

What a fetch accepts, and why:

* https only (a ``data:`` URL, which SMART allows for embedded logos, is decoded instead), on a
  host an EHR endpoint could be on (:func:`syncsvc.netguard.endpoint_problem`: no private,
  link-local or metadata address; loopback only with ``--allow-loopback``); names resolve through
  the EHR client's :class:`~syncsvc.netguard.PublicOnlyResolver`, so a name pointing inside the
  network is refused when connecting;
* at most :data:`MAX_REDIRECTS` redirects, each target checked by the same rules;
* PNG, JPEG, WebP or GIF, by the declared type *and* the file's own signature. SVG is refused:
  it is a document that can carry scripts and links, and making it inert would mean parsing and
  rewriting it; SMART asks brands for a PNG beside any SVG, and the next URL listed is tried;
* at most :data:`MAX_LOGO_BYTES`, refused by ``Content-Length`` first and counted while the body
  streams, before it is buffered whole; :data:`FETCH_TIMEOUT` for the whole fetch.

A logo that fails is reported by the import, never fails it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp

from syncsvc.db.columns import URL_LENGTH
from syncsvc.directory.bundle_index import quoted
from syncsvc.http import BodyTooLarge, describe_network_error, read_body
from syncsvc.netguard import NonPublicAddress, endpoint_problem, is_loopback_host

#: Where syncsvc serves a stored logo (``syncsvc.web.handlers.logos``).
LOGO_PATH = "/logos/{sha256}"
#: A logo shown at 32 pixels needs far less; SMART's 1024-pixel PNGs fit.
MAX_LOGO_BYTES = 256 * 1024
MAX_REDIRECTS = 3
#: Seconds for one logo, redirects included.
FETCH_SECONDS = 10.0
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=FETCH_SECONDS, sock_connect=5, sock_read=5)
#: Logos fetched at once by one import.
CONCURRENCY = 8
#: The image types served, with the signature each file of that type starts with.
SIGNATURES: Mapping[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: base64 grows bytes by 4/3; a data URL longer than this holds more than the cap.
_MAX_DATA_URL = 64 + (MAX_LOGO_BYTES + 2) // 3 * 4


@dataclass(frozen=True)
class Logo:
    """A checked image, named by its digest."""

    sha256: str
    content_type: str
    content: bytes


@dataclass(frozen=True)
class Refused:
    """Why a logo URL gave no logo, in a sentence an operator reads."""

    url: str
    reason: str

    def __str__(self) -> str:
        return f"{self.reason} ({quoted(self.url, 100)})"


class _Refusal(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def logo_path(sha256: str) -> str:
    """The path of a stored logo on syncsvc."""
    return LOGO_PATH.format(sha256=sha256)


def source_of(url: str) -> str:
    """What a tenant records as its logo's source: the URL, or for an embedded (``data:``) one
    ``data:`` and the URL's digest (it may be far longer than a URL column)."""
    if url.startswith("data:"):
        return f"data:{hashlib.sha256(url.encode()).hexdigest()}"
    return url


class LogoFetcher:
    """Fetches and checks logos through the process's EHR client, each URL once."""

    def __init__(self, http: aiohttp.ClientSession, *, allow_loopback: bool = False) -> None:
        self.http = http
        self.allow_loopback = allow_loopback
        self._results: dict[str, Logo | Refused] = {}

    async def fetch_all(self, urls: Iterable[str]) -> dict[str, Logo | Refused]:
        """Each distinct URL of ``urls`` fetched (a few at a time), by URL."""
        pending = [u for u in dict.fromkeys(urls) if u not in self._results]
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(url: str) -> None:
            async with gate:
                self._results[url] = await self.fetch(url)

        async with asyncio.TaskGroup() as group:
            for url in pending:
                group.create_task(one(url))
        return self._results

    async def fetch(self, url: str) -> Logo | Refused:
        """The logo at ``url``, or why there is none."""
        try:
            if url.startswith("data:"):
                return _decoded(url)
            return await asyncio.wait_for(self._fetch(url), FETCH_SECONDS)
        except _Refusal as refusal:
            return Refused(url, refusal.reason)
        except TimeoutError:
            return Refused(url, "timed out")
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, NonPublicAddress):
                return Refused(url, "its host resolves to a non-public address")
            return Refused(url, describe_network_error(exc))
        except aiohttp.ClientError as exc:
            return Refused(url, describe_network_error(exc))
        except ValueError:
            return Refused(url, "not a valid URL")
        except Exception as exc:  # a logo never fails the import: it is reported
            return Refused(url, f"the fetch failed ({type(exc).__name__})")

    async def _fetch(self, url: str) -> Logo:
        target = url
        for _ in range(MAX_REDIRECTS + 1):
            self._check_url(target)
            async with self.http.get(
                target,
                allow_redirects=False,
                timeout=FETCH_TIMEOUT,
                headers={"Accept": ", ".join(SIGNATURES)},
            ) as response:
                if response.status in _REDIRECTS:
                    location = response.headers.get("Location")
                    if not location:
                        raise _Refusal(f"a redirect ({response.status}) without a Location")
                    target = urljoin(target, location)
                    continue
                if response.status != 200:
                    raise _Refusal(f"answered {response.status}")
                content_type = _declared_type(response.headers.get("Content-Type"))
                declared = response.content_length
                if declared is not None and declared > MAX_LOGO_BYTES:
                    raise _Refusal(_too_large())
                try:
                    content = await read_body(response.content, MAX_LOGO_BYTES)
                except BodyTooLarge:
                    raise _Refusal(_too_large()) from None
                return _checked(content_type, content)
        raise _Refusal(f"more than {MAX_REDIRECTS} redirects")

    def _check_url(self, url: str) -> None:
        if len(url) > URL_LENGTH:
            raise _Refusal(f"the URL is longer than {URL_LENGTH:,} characters")
        try:
            parts = urlsplit(url)
        except ValueError:
            raise _Refusal("not a valid URL") from None
        if parts.scheme != "https":
            raise _Refusal("not https")
        loopback = is_loopback_host(parts.hostname)
        problem = endpoint_problem(url, loopback_tenant=loopback and self.allow_loopback)
        if problem is not None:
            hint = " (--allow-loopback)" if loopback else ""
            raise _Refusal(f"the URL {problem}{hint}")


def _declared_type(header: str | None) -> str:
    kind = (header or "").split(";", 1)[0].strip().lower()
    if kind == "image/svg+xml":
        raise _Refusal("SVG is refused (it can carry scripts); list a PNG beside it")
    if kind not in SIGNATURES:
        raise _Refusal(f"its type '{quoted(kind, 60) or 'none'}' is not PNG, JPEG, WebP or GIF")
    return kind


def _checked(content_type: str, content: bytes) -> Logo:
    """A Logo if ``content`` is the image type it claims to be."""
    signature_ok = any(content.startswith(s) for s in SIGNATURES[content_type])
    if content_type == "image/webp":
        signature_ok = signature_ok and content[8:12] == b"WEBP"
    if not signature_ok:
        raise _Refusal(f"the file is not the {content_type} it is declared as")
    return Logo(hashlib.sha256(content).hexdigest(), content_type, content)


def _decoded(url: str) -> Logo:
    """The logo a ``data:`` URL embeds (base64 only: SMART's examples use it)."""
    if len(url) > _MAX_DATA_URL:
        raise _Refusal(_too_large())
    header, comma, payload = url[5:].partition(",")
    if not comma or not header.lower().endswith(";base64"):
        raise _Refusal("a data: URL that is not base64")
    content_type = _declared_type(header[: -len(";base64")])
    try:
        content = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _Refusal("a data: URL that is not valid base64") from None
    if len(content) > MAX_LOGO_BYTES:
        raise _Refusal(_too_large())
    return _checked(content_type, content)


def _too_large() -> str:
    return f"larger than {MAX_LOGO_BYTES // 1024} KB"
