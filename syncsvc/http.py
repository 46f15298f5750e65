"""The process's outbound HTTP client: no cookie jar, explicit timeouts, a bounded pool."""

from __future__ import annotations

import aiohttp

USER_AGENT = "syncsvc/0.1 (+SMART on FHIR sync)"


def create_http_client(
    *, total_seconds: float = 60, connect_seconds: float = 10, read_seconds: float = 30
) -> aiohttp.ClientSession:
    """A client session for EHR traffic.

    ``DummyCookieJar``: no cookie set by one patient's EHR ever rides on another's request.
    ``allow_redirects`` stays per call; token and FHIR calls pass ``False`` so a bearer token is
    never carried to a URL it was not issued for.
    """
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(
            total=total_seconds, connect=connect_seconds, sock_read=read_seconds
        ),
        connector=aiohttp.TCPConnector(limit=100, limit_per_host=20),
        headers={"User-Agent": USER_AGENT},
    )


class BodyTooLarge(Exception):
    """A body exceeded the size syncsvc accepts for it."""


async def read_body(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body of a stream, or BodyTooLarge past ``limit`` bytes.

    ``StreamReader.read(n)`` returns as soon as *some* data is buffered, which silently cuts a
    body that arrives in several chunks; this reads to the end.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in content.iter_any():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)
