"""The sandbox's admin API under ``/admin/``: data changes, policies, faults, grants, clock, log.

Tests and the demo drive the emulated EHR through it: add, update, delete or mark resources
entered-in-error (to exercise incremental sync), switch policies and faults between two requests,
revoke grants, move the clock, and read the request log to prove where a token was sent. It answers
loopback clients only. Path parameters are named ``tenant_id`` (not ``tenant``) so the request log
does not mistake admin calls for calls to a tenant's endpoints.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import re
import types
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from .config import COMPARTMENT_TYPES, FaultSpec, TenantConfig, TenantPolicy
from .data import Bucket, DataStore, Entry, iso_ms
from .documents import BinaryEntry
from .fhir import data_store
from .state import Grant, SandboxState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_FHIR_ID = re.compile(r"[A-Za-z0-9.-]{1,64}")
#: Types the admin API may change; Patient resources may only be updated (patients are config).
_MUTABLE_TYPES = frozenset({"Patient", *COMPARTMENT_TYPES})


class AdminError(Exception):
    """A refused admin call, answered as ``{"error": ..., "detail": ...}``."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


def is_loopback(remote: str | None) -> bool:
    """Whether a peer address is a loopback address (IPv4 127/8, ``::1``, IPv4-mapped)."""
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _loopback_name(host: str | None) -> bool:
    """Whether a Host header or an Origin's host names this machine (any port)."""
    if not host:
        return False
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if host.startswith("["):
        name = host[1 : host.index("]")] if "]" in host else host
    return name.lower() == "localhost" or is_loopback(name)


def _browser_problem(request: web.Request) -> str | None:
    """Why a request may come from a web page rather than a local tool, or None.

    A page elsewhere can make the developer's browser send simple cross-origin requests
    (form or text/plain POSTs: CSRF) and, through a name that resolves to 127.0.0.1, reach
    this port under its own origin (DNS rebinding). The ``Host`` must name this machine, an
    ``Origin`` (browsers send one with every cross-origin and every POST request) must be a
    loopback origin, and a state change must carry a JSON body type, which no page can send
    without a CORS preflight that this API never grants.
    """
    if not _loopback_name(request.headers.get("Host")):
        return "The Host header must name this machine (127.0.0.1, [::1] or localhost)"
    origin = request.headers.get("Origin")
    if origin is not None and not _loopback_name(urlsplit(origin).netloc):
        return "Requests from a web page of another origin are refused"
    if request.method in ("POST", "PUT", "PATCH") and request.content_type != "application/json":
        return "A change must be sent as application/json"
    return None


def _guarded(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        # The peer address of the socket, never a forwarding header: those are client-controlled.
        if not is_loopback(request.remote):
            return _error(403, "forbidden", "The admin API answers loopback clients only")
        problem = _browser_problem(request)
        if problem is not None:
            return _error(403, "forbidden", problem)
        try:
            return await handler(request)
        except AdminError as exc:
            return _error(exc.status, exc.error, exc.detail)

    return guarded


def _error(status: int, error: str, detail: str) -> web.Response:
    return _json({"error": error, "detail": detail}, status)


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise AdminError(400, "invalid_json", "The request body is not JSON") from None


async def _object_body(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    body = await _body(request)
    if body is None and not required:
        return {}
    if not isinstance(body, dict):
        raise AdminError(400, "invalid_request", "The request body must be a JSON object")
    return body


def setup_routes(app: web.Application, state: SandboxState) -> None:
    """Register the admin API."""
    api = AdminApi(state, data_store(app, state))
    tenant = "/admin/tenants/{tenant_id}"
    resources = tenant + "/patients/{patient_id}/{type:[A-Z][A-Za-z]+}"
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/admin/grants", api.grants),
        ("POST", "/admin/grants/revoke", api.revoke),
        ("GET", "/admin/clock", api.clock),
        ("POST", "/admin/clock/advance", api.advance_clock),
        ("GET", "/admin/requests", api.requests),
        ("DELETE", "/admin/requests", api.clear_requests),
        ("GET", tenant + "/policy", api.get_policy),
        ("PATCH", tenant + "/policy", api.patch_policy),
        ("GET", tenant + "/faults", api.get_faults),
        ("PUT", tenant + "/faults", api.put_faults),
        ("DELETE", tenant + "/faults", api.delete_faults),
        ("GET", resources, api.list_resources),
        ("POST", resources, api.add_resource),
        ("GET", resources + "/{id}", api.get_resource),
        ("PUT", resources + "/{id}", api.replace_resource),
        ("PATCH", resources + "/{id}", api.patch_resource),
        ("DELETE", resources + "/{id}", api.delete_resource),
        ("POST", resources + "/{id}/entered-in-error", api.enter_in_error),
        ("PUT", tenant + "/binaries/{id}", api.put_binary),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, _guarded(handler))


class AdminApi:
    """The admin handlers over the shared state and data store."""

    def __init__(self, state: SandboxState, store: DataStore) -> None:
        self.state = state
        self.store = store

    # Lookups

    def _tenant(self, request: web.Request) -> TenantConfig:
        tenant = self.state.tenant(request.match_info["tenant_id"])
        if tenant is None:
            raise AdminError(404, "unknown_tenant", f"No tenant {request.match_info['tenant_id']}")
        return tenant

    def _bucket(self, request: web.Request) -> Bucket:
        tenant = self._tenant(request)
        resource_type = request.match_info["type"]
        if resource_type not in _MUTABLE_TYPES:
            raise AdminError(404, "unknown_type", f"{resource_type} is not served")
        patient_id = request.match_info["patient_id"]
        bucket = self.store.bucket(tenant, patient_id, resource_type)
        if bucket is None:
            raise AdminError(404, "unknown_patient", f"No patient {patient_id} at {tenant.id}")
        return bucket

    def _existing(self, request: web.Request) -> tuple[Bucket, Entry]:
        bucket = self._bucket(request)
        entry = bucket.by_id.get(request.match_info["id"])
        if entry is None:
            raise AdminError(404, "unknown_resource", f"No {bucket.resource_type} with that id")
        return bucket, entry

    @staticmethod
    def _resource_body(body: dict[str, Any], resource_type: str) -> dict[str, Any]:
        if body.get("resourceType", resource_type) != resource_type:
            raise AdminError(400, "invalid_resource", f"resourceType must be {resource_type}")
        return body

    # Resources

    async def list_resources(self, request: web.Request) -> web.Response:
        """Ids, versions and lastUpdated of a patient's resources of one type, oldest first."""
        bucket = self._bucket(request)
        return _json(
            [
                {"id": e.id, "versionId": str(e.version), "lastUpdated": iso_ms(e.ms)}
                for e in bucket.entries
            ]
        )

    async def get_resource(self, request: web.Request) -> web.Response:
        """One stored resource as JSON."""
        _, entry = self._existing(request)
        return web.Response(body=entry.body, content_type="application/fhir+json")

    async def add_resource(self, request: web.Request) -> web.Response:
        """Add a resource (version 1, lastUpdated now); its patient reference is set for it."""
        bucket = self._bucket(request)
        if bucket.resource_type == "Patient":
            raise AdminError(400, "not_allowed", "Patients come from the configuration")
        body = self._resource_body(await _object_body(request), bucket.resource_type)
        rid = body.get("id")
        if rid is not None and (not isinstance(rid, str) or not _FHIR_ID.fullmatch(rid)):
            raise AdminError(400, "invalid_resource", "id must be a FHIR id")
        try:
            entry = self.store.add(bucket, body, self.state.now())
        except ValueError as exc:
            raise AdminError(409, "conflict", str(exc)) from None
        return web.Response(body=entry.body, status=201, content_type="application/fhir+json")

    async def replace_resource(self, request: web.Request) -> web.Response:
        """Replace a resource with a new version (full replacement)."""
        bucket, entry = self._existing(request)
        body = self._resource_body(await _object_body(request), bucket.resource_type)
        return self._updated(bucket, entry.id, body)

    async def patch_resource(self, request: web.Request) -> web.Response:
        """Merge-patch (RFC 7386) a resource into a new version; ``{}`` only bumps the version."""
        bucket, entry = self._existing(request)
        patch = await _object_body(request, required=False)
        merged = merge_patch(entry.resource(), patch)
        return self._updated(bucket, entry.id, self._resource_body(merged, bucket.resource_type))

    def _updated(self, bucket: Bucket, rid: str, body: dict[str, Any]) -> web.Response:
        updated = self.store.update(bucket, rid, body, self.state.now())
        if updated is None:
            raise AdminError(404, "unknown_resource", f"No {bucket.resource_type} with that id")
        return web.Response(body=updated.body, content_type="application/fhir+json")

    async def delete_resource(self, request: web.Request) -> web.Response:
        """Delete a resource: searches no longer return it and reads answer 410."""
        bucket, entry = self._existing(request)
        if bucket.resource_type == "Patient":
            raise AdminError(400, "not_allowed", "Patients come from the configuration")
        self.store.delete(bucket, entry.id)
        return web.Response(status=204)

    async def enter_in_error(self, request: web.Request) -> web.Response:
        """Mark a resource entered-in-error (a new version)."""
        bucket, entry = self._existing(request)
        if bucket.resource_type == "Patient":
            raise AdminError(400, "not_allowed", "Patients cannot be entered in error")
        marked = self.store.enter_in_error(bucket, entry.id, self.state.now())
        if marked is None:
            raise AdminError(404, "unknown_resource", f"No {bucket.resource_type} with that id")
        return web.Response(body=marked.body, content_type="application/fhir+json")

    async def put_binary(self, request: web.Request) -> web.Response:
        """Store a Binary: ``{"patient", "contentType", "data" (base64), "servedAs"?}``.

        ``servedAs`` makes the raw answer carry another Content-Type than the one declared.
        """
        tenant = self._tenant(request)
        bid = request.match_info["id"]
        body = await _object_body(request)
        patient, content_type = body.get("patient"), body.get("contentType")
        served_as, data = body.get("servedAs"), body.get("data")
        if not _FHIR_ID.fullmatch(bid) or self.store.patient(tenant, str(patient)) is None:
            raise AdminError(400, "invalid_binary", "A FHIR id and a configured patient are needed")
        if not isinstance(content_type, str) or not isinstance(data, str):
            raise AdminError(400, "invalid_binary", "contentType and data must be strings")
        if served_as is not None and not isinstance(served_as, str):
            raise AdminError(400, "invalid_binary", "servedAs must be a string")
        try:
            content = base64.b64decode(data, validate=True)
        except binascii.Error:
            raise AdminError(400, "invalid_binary", "data must be base64") from None
        entry = BinaryEntry(
            str(patient), content_type, content, round(self.state.now() * 1000), served_as=served_as
        )
        self.store.put_binary(tenant, bid, entry)
        return web.Response(status=204)

    # Policy and faults

    async def get_policy(self, request: web.Request) -> web.Response:
        """The tenant's policy."""
        return _json(dataclasses.asdict(self._tenant(request).policy))

    async def patch_policy(self, request: web.Request) -> web.Response:
        """Merge fields into the tenant's policy; all-or-nothing, 400 on an unknown or bad field."""
        tenant = self._tenant(request)
        patch = await _object_body(request)
        current = dataclasses.asdict(tenant.policy)
        hints = get_type_hints(TenantPolicy)
        changes: dict[str, Any] = {}
        for name, value in patch.items():
            if name not in hints:
                raise AdminError(400, "unknown_field", f"TenantPolicy has no field {name!r}")
            new = (
                merge_patch(current[name], value)
                if isinstance(value, dict) and isinstance(current[name], dict)
                else value
            )
            if not conforms(new, hints[name]):
                raise AdminError(400, "invalid_value", f"{name}: {value!r} is not valid")
            changes[name] = new
        # In place: every holder of this tenant's policy object sees the change at once.
        for name, value in changes.items():
            setattr(tenant.policy, name, value)
        return _json(dataclasses.asdict(tenant.policy))

    async def get_faults(self, request: web.Request) -> web.Response:
        """The tenant's faults, each with how often it has fired (count-limited ones)."""
        tenant = self._tenant(request)
        return _json([self._fault_summary(f) for f in tenant.faults])

    def _fault_summary(self, fault: FaultSpec) -> dict[str, Any]:
        counter = self.state.fault_counters.get(id(fault))
        return dataclasses.asdict(fault) | {"fired": counter.fired if counter else 0}

    async def put_faults(self, request: web.Request) -> web.Response:
        """Replace the tenant's faults with a list of FaultSpec objects."""
        tenant = self._tenant(request)
        body = await _body(request)
        if not isinstance(body, list):
            raise AdminError(400, "invalid_request", "The body must be a list of faults")
        new_faults = [parse_fault(item) for item in body]
        self._replace_faults(tenant, new_faults)
        return _json([self._fault_summary(f) for f in tenant.faults])

    async def delete_faults(self, request: web.Request) -> web.Response:
        """Remove every fault of the tenant."""
        self._replace_faults(self._tenant(request), [])
        return web.Response(status=204)

    def _replace_faults(self, tenant: TenantConfig, new_faults: list[FaultSpec]) -> None:
        for old in tenant.faults:
            # Counters are keyed by object id, which a new fault object could reuse.
            self.state.fault_counters.pop(id(old), None)
        tenant.faults[:] = new_faults

    # Grants, clock, request log

    async def grants(self, request: web.Request) -> web.Response:
        """Every grant, without any token value."""
        return _json([_grant_summary(g) for g in self.state.grants.values()])

    async def revoke(self, request: web.Request) -> web.Response:
        """Revoke one grant (``gid``) or all matching ``tenant``/``patient``/``client_id``."""
        body = await _object_body(request)
        filters = {k: body.get(k) for k in ("gid", "tenant", "patient", "client_id")}
        unknown = set(body) - set(filters)
        if unknown or not any(isinstance(v, str) for v in filters.values()):
            raise AdminError(
                400, "invalid_request", "Give gid, or any of tenant, patient and client_id"
            )
        matched = [g for g in self.state.grants.values() if _grant_matches(g, filters)]
        for grant in matched:
            grant.revoked = True
            grant.revoked_reason = "revoked by the sandbox admin API"
        return _json({"revoked": [g.grant_id for g in matched]})

    async def clock(self, request: web.Request) -> web.Response:
        """The sandbox's now and its offset from the wall clock."""
        return _json({"now": self.state.now(), "offset": self.state.clock_offset})

    async def advance_clock(self, request: web.Request) -> web.Response:
        """Move the sandbox clock by ``seconds`` (token expiries, idle limits)."""
        seconds = (await _object_body(request)).get("seconds")
        if not isinstance(seconds, int | float) or isinstance(seconds, bool):
            raise AdminError(400, "invalid_request", "seconds must be a number")
        self.state.clock_offset += seconds
        return _json({"now": self.state.now(), "offset": self.state.clock_offset})

    async def requests(self, request: web.Request) -> web.Response:
        """The request log from index ``since`` (default 0), optionally for one ``tenant``."""
        since_raw = request.query.get("since", "0")
        if not since_raw.isdigit():
            raise AdminError(400, "invalid_request", "since must be a non-negative integer")
        since = int(since_raw)
        tenant = request.query.get("tenant")
        log = list(self.state.request_log)
        return _json(
            [
                {"index": index, **dataclasses.asdict(entry)}
                for index, entry in enumerate(log)
                if index >= since
                and (tenant is None or tenant in (entry.tenant_id, entry.token_tenant))
            ]
        )

    async def clear_requests(self, request: web.Request) -> web.Response:
        """Empty the request log (indexes start again at 0)."""
        self.state.request_log.clear()
        return web.Response(status=204)


def _grant_summary(grant: Grant) -> dict[str, Any]:
    return {
        "gid": grant.grant_id,
        "tenant": grant.tenant_id,
        "client_id": grant.client_id,
        "patient": grant.patient_id,
        "scopes": grant.scopes,
        "created_at": grant.created_at,
        "last_used_at": grant.last_used_at,
        "has_refresh_token": grant.refresh_token is not None,
        "refresh_expires_at": grant.refresh_expires_at,
        "last_refresh_at": grant.last_refresh_at,
        "refresh_count": grant.refresh_count,
        "revoked": grant.revoked,
        "revoked_reason": grant.revoked_reason,
    }


def _grant_matches(grant: Grant, filters: dict[str, Any]) -> bool:
    actual = {
        "gid": grant.grant_id,
        "tenant": grant.tenant_id,
        "patient": grant.patient_id,
        "client_id": grant.client_id,
    }
    return all(value is None or actual[key] == value for key, value in filters.items())


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch of ``patch`` onto ``target`` (which is not modified)."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def parse_fault(raw: Any) -> FaultSpec:
    """A FaultSpec from JSON, type-checked; raises ``AdminError`` (400) when invalid."""
    if not isinstance(raw, dict):
        raise AdminError(400, "invalid_fault", "Each fault must be a JSON object")
    hints = get_type_hints(FaultSpec)
    for name, value in raw.items():
        if name not in hints:
            raise AdminError(400, "unknown_field", f"FaultSpec has no field {name!r}")
        if not conforms(value, hints[name]):
            raise AdminError(400, "invalid_value", f"{name}: {value!r} is not valid")
    if "kind" not in raw:
        raise AdminError(400, "invalid_fault", "A fault needs a kind")
    fault = FaultSpec(**raw)
    if fault.rate is not None and not 0 <= fault.rate <= 1:
        raise AdminError(400, "invalid_value", "rate must be between 0 and 1")
    if fault.count is not None and fault.count < 0:
        raise AdminError(400, "invalid_value", "count must not be negative")
    return fault


def conforms(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a dataclass field's type (the shapes the config uses)."""
    origin = get_origin(hint)
    args = get_args(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return value in args
    if origin in (Union, types.UnionType):
        return any(conforms(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and all(conforms(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            conforms(k, args[0]) and conforms(v, args[1]) for k, v in value.items()
        )
    return False
