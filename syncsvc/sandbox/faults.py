"""Injected faults of the FHIR server: outages, throttling, broken bodies and paging quirks.

A tenant's faults (``TenantConfig.faults``) target ``fhir`` (every FHIR request) or one resource
type, and every patient or one (``FaultSpec.patient``): a real EHR's Condition search may answer
503 for one record while the rest work. Each fault is consulted only where it can take effect, so
a count-limited fault is spent on a request it actually changes. Faults without a patient act
before the token is checked (a load balancer's outage); a patient's faults act once the token
has named the patient. Token-endpoint faults belong to the authorization server.
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
        "status_502",
        "status_503",
        "status_504",
        "throttle",
        "throttle_no_retry_after",
        "reset",
        "bad_request_diagnostics",
    }
)
#: The answer of each injected 5xx: status, OperationOutcome code and text.
_STATUS_FAULTS: Mapping[str, tuple[int, str, str]] = {
    "status_500": (500, "exception", "Internal server error (injected)"),
    "status_502": (502, "transient", "Bad gateway (injected)"),
    "status_503": (503, "transient", "Service unavailable (injected)"),
    "status_504": (504, "timeout", "Gateway timeout (injected)"),
}
#: The status the request log records for a connection the sandbox dropped on purpose
#: (nothing is sent; the client sees a reset).
RESET_LOG_STATUS = 599


def _applies(fault: FaultSpec, resource_type: str, patient_id: str | None) -> bool:
    return fault.target in ("fhir", resource_type) and fault.patient == patient_id


def firing(
    state: SandboxState,
    tenant: TenantConfig,
    resource_type: str,
    kind: str,
    *,
    patient_id: str | None = None,
) -> FaultSpec | None:
    """The first fault of ``kind`` for this request that fires, if any.

    Faults for every patient are consulted first, then those of ``patient_id`` (when given).
    """
    for fault in list(tenant.faults):
        if fault.kind != kind or fault.target not in ("fhir", resource_type):
            continue
        if fault.patient is not None and fault.patient != patient_id:
            continue
        if state.should_fire(fault):
            return fault
    return None


async def before_request(
    request: web.Request,
    state: SandboxState,
    tenant: TenantConfig,
    resource_type: str,
    *,
    patient_id: str | None = None,
) -> web.StreamResponse | None:
    """Apply latency, and answer with an error or a reset if such a fault fires.

    Called twice per request: before the token is checked with ``patient_id`` None (faults for
    every patient), and after it with the token's patient (that patient's faults only).
    """
    faults = list(tenant.faults)
    delay_ms = sum(
        f.latency_ms
        for f in faults
        if f.kind == "latency" and _applies(f, resource_type, patient_id) and state.should_fire(f)
    )
    if delay_ms > 0:
        await asyncio.sleep(delay_ms / 1000)
    for fault in faults:
        if (
            fault.kind in _ERROR_KINDS
            and _applies(fault, resource_type, patient_id)
            and state.should_fire(fault)
        ):
            return _error_response(request, fault)
    return None


def _error_response(request: web.Request, fault: FaultSpec) -> web.StreamResponse:
    if fault.kind in _STATUS_FAULTS:
        status, code, text = _STATUS_FAULTS[fault.kind]
        headers = {"Retry-After": str(fault.retry_after)} if fault.with_retry_after else None
        return operation_outcome(status, code, text, headers=headers)
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
    patient_id: str | None = None,
) -> web.StreamResponse:
    """Send a successful FHIR response, broken if a body fault fires."""
    if tenant.faults:
        oversized = firing(state, tenant, resource_type, "oversized_page", patient_id=patient_id)
        if oversized is not None:
            return await _send_oversized(request, body, oversized.size_bytes, headers)
        if (
            firing(state, tenant, resource_type, "malformed_json", patient_id=patient_id)
            is not None
        ):
            return fhir_response(body[: len(body) // 2], headers=headers)
        if firing(state, tenant, resource_type, "truncated", patient_id=patient_id) is not None:
            return await _send_truncated(request, body, headers, reset=False)
        if (
            firing(state, tenant, resource_type, "reset_mid_body", patient_id=patient_id)
            is not None
        ):
            return await _send_truncated(request, body, headers, reset=True)
    return fhir_response(body, headers=headers)


async def _send_truncated(
    request: web.Request, body: bytes, headers: Mapping[str, str] | None, *, reset: bool
) -> web.StreamResponse:
    response = web.StreamResponse(headers=headers)
    response.content_type = "application/fhir+json"
    # Announce the whole body, send half, then close (or reset): the client sees a short read.
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    if reset:
        await asyncio.sleep(0)  # let the half body leave before the reset discards the buffer
        reset_connection(request)
    elif request.transport is not None:
        request.transport.close()
    return response


#: Chunks an oversized page is streamed in (a hostile server need not announce its length).
_OVERSIZED_CHUNK = 256 * 1024


async def _send_oversized(
    request: web.Request, body: bytes, size: int, headers: Mapping[str, str] | None
) -> web.StreamResponse:
    """The page padded with whitespace to ``size`` bytes (still valid JSON), sent chunked."""
    closing = body.rstrip()
    if not closing.endswith(b"}"):
        return fhir_response(body, headers=headers)
    padding = max(0, size - len(body))
    response = web.StreamResponse(headers=headers)
    response.content_type = "application/fhir+json"
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        await response.write(closing[:-1])
        blank = b" " * _OVERSIZED_CHUNK
        for start in range(0, padding, _OVERSIZED_CHUNK):
            await response.write(blank[: min(_OVERSIZED_CHUNK, padding - start)])
        await response.write(b"}")
        await response.write_eof()
    except (ConnectionResetError, ConnectionError):
        pass  # the client stopped reading, as it should
    return response
