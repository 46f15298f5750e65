"""The process's outbound HTTP client: no cookie jar, explicit timeouts, a bounded pool."""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from types import SimpleNamespace

import aiohttp
from aiohttp.abc import AbstractResolver

from syncsvc.netguard import PublicOnlyResolver

USER_AGENT = "syncsvc/0.1 (+SMART on FHIR sync)"

#: What a request made from the current task waits for first: the per-tenant rate budget the
#: sync runner installs while it works one connection (``syncsvc.sync.limits``); None elsewhere.
REQUEST_GATE: ContextVar[Callable[[], Awaitable[None]] | None] = ContextVar(
    "syncsvc_request_gate", default=None
)
#: Who hears that a request from the current task was answered 429, with its ``Retry-After``
#: header: the tenant's rate budget, which then pauses every connection of the tenant.
THROTTLE_LISTENER: ContextVar[Callable[[str | None], None] | None] = ContextVar(
    "syncsvc_throttle_listener", default=None
)


async def _await_gate(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestStartParams,
) -> None:
    # Trace callbacks run in the requesting task, so they see its context variables.
    gate = REQUEST_GATE.get()
    if gate is not None:
        await gate()


async def _hear_throttle(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestEndParams,
) -> None:
    if params.response.status != 429:
        return
    listener = THROTTLE_LISTENER.get()
    if listener is not None:
        listener(params.response.headers.get("Retry-After"))


def gated_trace() -> aiohttp.TraceConfig:
    """A trace config that makes every request wait for :data:`REQUEST_GATE` first, and tells
    :data:`THROTTLE_LISTENER` about every 429."""
    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(_await_gate)
    trace.on_request_end.append(_hear_throttle)
    return trace


def create_http_client(
    *,
    total_seconds: float = 60,
    connect_seconds: float = 10,
    read_seconds: float = 30,
    resolver: AbstractResolver | None = None,
    trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ssl_context: ssl.SSLContext | None = None,
    max_connections: int = 100,
) -> aiohttp.ClientSession:
    """A client session for EHR traffic.

    ``DummyCookieJar``: no cookie set by one patient's EHR ever rides on another's request.
    ``allow_redirects`` stays per call; token and FHIR calls pass ``False`` so a bearer token is
    never carried to a URL it was not issued for. Every request first waits for the
    :data:`REQUEST_GATE` of the task sending it (the tenant's rate budget during sync work).
    Host names are resolved through :class:`~syncsvc.netguard.PublicOnlyResolver` (wrapping
    ``resolver``, the system's by default): no EHR request reaches a private address by name.
    ``trace_configs`` hear about each request after the gate (a request they see starting has
    passed it).
    Webhooks never use this session (see :func:`create_webhook_client`). ``ssl_context``
    replaces the default trust store (a private CA, tests). ``max_connections`` bounds the
    pool, per host too: the process sizes it to the connections it works at once, so the pool is
    never what caps them (many tenants share one vendor host, and the tenant limits pace each).
    """
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(
            total=total_seconds, connect=connect_seconds, sock_read=read_seconds
        ),
        connector=aiohttp.TCPConnector(
            limit=max_connections,
            limit_per_host=max_connections,
            resolver=PublicOnlyResolver(resolver),
            # No cache of answers: a name must be judged each time it is resolved again.
            use_dns_cache=False,
            ssl=True if ssl_context is None else ssl_context,
        ),
        headers={"User-Agent": USER_AGENT},
        trace_configs=[gated_trace(), *trace_configs],
    )


def create_webhook_client(
    *,
    resolver: AbstractResolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> aiohttp.ClientSession:
    """A client session for webhook delivery only, with a connection pool of its own.

    The operator configures the receiver, which may be a name inside their network, so names
    are not limited to public addresses here. That is safe only because the pool is separate: a
    keep-alive connection opened to an internal receiver can never be picked up by an EHR
    request to the same host and port, which would skip the public-address check made when a
    connection is opened. ``DummyCookieJar``, no redirects (per call), no tenant rate gate.
    """
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=30, connect=10, sock_read=20),
        connector=aiohttp.TCPConnector(
            limit=10,
            resolver=resolver,
            use_dns_cache=False,
            ssl=True if ssl_context is None else ssl_context,
        ),
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


def describe_listen_error(host: str, port: int, exc: OSError) -> str:
    """Why a server socket could not be bound, naming the port: ``cannot listen on ...: ...``."""
    if exc.errno == errno.EADDRINUSE:
        reason = f"port {port} is already in use (another syncsvc, or another program?)"
    elif exc.errno == errno.EACCES:
        reason = f"not allowed to listen on port {port} (ports below 1024 need privileges)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        reason = f"{host} is not an address of this machine"
    else:
        reason = (exc.strerror or str(exc)).lower()
    return f"cannot listen on {host}:{port}: {reason}"


def describe_network_error(exc: BaseException) -> str:
    """What went wrong with an outbound request, in words an operator reads without a manual.

    ``could not resolve fhir.invalid``, ``connection refused by 127.0.0.1:5999`` and the like,
    never an exception class name. The words carry no URL query, so no credential.
    """
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"could not resolve {exc.host}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"the TLS certificate of {exc.host} was not accepted"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return f"the TLS handshake with {exc.host}:{exc.port} failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = exc.os_error
        if isinstance(cause, socket.gaierror):
            return f"could not resolve {exc.host}"
        if isinstance(cause, ConnectionRefusedError):
            return f"connection refused by {exc.host}:{exc.port}"
        if isinstance(cause, TimeoutError):
            return f"timed out connecting to {exc.host}:{exc.port}"
        reason = cause.strerror or "connection failed"
        return f"could not connect to {exc.host}:{exc.port}: {reason.lower()}"
    # ServerTimeoutError is both a ClientError and a TimeoutError: test the timeout first.
    if isinstance(exc, TimeoutError):
        return "timed out waiting for an answer"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer was cut off before its end"
    if isinstance(exc, aiohttp.InvalidURL):
        return "the URL is not valid"
    if isinstance(exc, aiohttp.ClientOSError):
        return f"the connection failed: {(exc.strerror or 'network error').lower()}"
    return f"the request failed ({type(exc).__name__})"
