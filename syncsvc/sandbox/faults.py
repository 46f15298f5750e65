"""Injected faults of the FHIR server: outages, throttling, broken bodies and paging quirks.

A tenant's faults (``TenantConfig.faults``) target ``fhir`` (every FHIR request) or one resource
type. Each fault is consulted only where it can take effect, so a count-limited fault is spent on a
request it actually changes. Token-endpoint faults belong to the authorization server.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from .config import FaultSpec, TenantConfig
from .outcomes import fhir_response, operation_outcome
from .state import SandboxState

_ERROR_KINDS = frozenset(
    {
        "status_500",
        "status_503",
        "throttle",
        "throttle_no_retry_after",
        "reset",
        "bad_request_diagnostics",
    }
)
#: The status the request log records for a connection the sandbox dropped on purpose
#: (nothing is sent; the client sees a reset).
RESET_LOG_STATUS = 599


def _applies(fault: FaultSpec, resource_type: str) -> bool:
    return fault.target in ("fhir", resource_type)


def firing(
    state: SandboxState, tenant: TenantConfig, resource_type: str, kind: str
) -> FaultSpec | None:
    """The first fault of ``kind`` for this request that fires, if any."""
    for fault in list(tenant.faults):
        if fault.kind == kind and _applies(fault, resource_type) and state.should_fire(fault):
            return fault
    return None


async def before_request(
    request: web.Request, state: SandboxState, tenant: TenantConfig, resource_type: str
) -> web.StreamResponse | None:
    """Apply latency, and answer with an error or a reset if such a fault fires."""
    faults = list(tenant.faults)
    delay_ms = sum(
        f.latency_ms
        for f in faults
        if f.kind == "latency" and _applies(f, resource_type) and state.should_fire(f)
    )
    if delay_ms > 0:
        await asyncio.sleep(delay_ms / 1000)
    for fault in faults:
        if (
            fault.kind in _ERROR_KINDS
            and _applies(fault, resource_type)
            and state.should_fire(fault)
        ):
            return _error_response(request, fault)
    return None


def _error_response(request: web.Request, fault: FaultSpec) -> web.StreamResponse:
    if fault.kind == "status_500":
        return operation_outcome(500, "exception", "Internal server error (injected)")
    if fault.kind == "status_503":
        return operation_outcome(503, "transient", "Service unavailable (injected)")
    if fault.kind == "throttle":
        return operation_outcome(
            429,
            "throttled",
            "Too many requests (injected)",
            headers={"Retry-After": str(fault.retry_after)},
        )
    if fault.kind == "throttle_no_retry_after":
        return operation_outcome(429, "throttled", "Too many requests (injected)")
    if fault.kind == "bad_request_diagnostics":
        return operation_outcome(400, "invalid", fault.diagnostics or "Bad request (injected)")
    reset_connection(request)
    return web.Response(status=RESET_LOG_STATUS)


def reset_connection(request: web.Request) -> None:
    """Drop the connection with a TCP reset; nothing of the response is sent."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0 makes close() send RST instead of FIN, like a load balancer cutting a flow.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


@dataclass(frozen=True)
class PagingFaults:
    """Which paging quirks apply to one searchset page."""

    next_self: bool = False
    next_foreign: bool = False
    #: A path appended to the FHIR base as the next link (one that tries to leave the base).
    next_escape: str | None = None
    empty_last_page_with_next: bool = False
    foreign_patient_entry: bool = False


def paging_faults(
    state: SandboxState, tenant: TenantConfig, resource_type: str, *, last_page: bool
) -> PagingFaults:
    """The paging faults that fire for a page (the empty-trailing-page one only on a last page)."""
    if not tenant.faults:
        return PagingFaults()
    escape = firing(state, tenant, resource_type, "next_escape")
    return PagingFaults(
        next_self=firing(state, tenant, resource_type, "next_self") is not None,
        next_foreign=firing(state, tenant, resource_type, "next_foreign") is not None,
        next_escape=(escape.next_path if escape is not None else None),
        empty_last_page_with_next=(
            last_page
            and firing(state, tenant, resource_type, "empty_last_page_with_next") is not None
        ),
        foreign_patient_entry=(
            firing(state, tenant, resource_type, "foreign_patient_entry") is not None
        ),
    )


def foreign_origin(origin: str) -> str:
    """Another loopback origin, on the same port, that the sandbox does not listen on."""
    port = urlsplit(origin).port
    return f"http://127.0.0.2:{port}" if port else "http://127.0.0.2"


async def send(
    request: web.Request,
    state: SandboxState,
    tenant: TenantConfig,
    resource_type: str,
    body: bytes,
    *,
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Send a successful FHIR response, broken if a body fault fires."""
    if tenant.faults:
        if firing(state, tenant, resource_type, "malformed_json") is not None:
            return fhir_response(body[: len(body) // 2], headers=headers)
        if firing(state, tenant, resource_type, "truncated") is not None:
            return await _send_truncated(request, body, headers)
    return fhir_response(body, headers=headers)


async def _send_truncated(
    request: web.Request, body: bytes, headers: Mapping[str, str] | None
) -> web.StreamResponse:
    response = web.StreamResponse(headers=headers)
    response.content_type = "application/fhir+json"
    # Announce the whole body, send half, then close: the client sees a short read.
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.close()
    return response
