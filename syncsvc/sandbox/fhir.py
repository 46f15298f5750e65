"""The sandbox's FHIR R4 resource server: Patient and patient-compartment search and read, Binary,
and the tenant's shared resources (Practitioner, Location ...) by read and ``_id`` search.

Each vendor profile serves the same handlers under its own FHIR base shape. Searches follow the
tenant's policy (``_count`` defaults and maxima, where ``_lastUpdated`` is accepted, required
categories). Paging is by opaque page contexts: a context remembers the query and an offset into
the patient's sorted resources, so every page is a slice and costs O(page).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import orjson
from aiohttp import web
from multidict import MultiMapping

from . import faults
from .config import COMPARTMENT_TYPES, SERVED_TYPES, TenantConfig, TenantPolicy, Vendor
from .data import (
    CategoryFilter,
    DataStore,
    Entry,
    iso_ms,
    make_entry,
    patient_reference_field,
    to_ms,
)
from .documents import binary_response
from .enforce import Access, authorize, foreign_patient, insufficient_scope, unknown_tenant
from .everything import Everything
from .outcomes import operation_outcome
from .profiles import ROUTE_TEMPLATES
from .referenced import REFERENCED_TYPES
from .scopes import Operation, resource_within, search_within
from .state import SandboxState

DATA_KEY = web.AppKey("sandbox_data", DataStore)
SEARCHABLE_TYPES: tuple[str, ...] = ("Patient", *COMPARTMENT_TYPES, *REFERENCED_TYPES)
#: Ids one ``_id`` search of a shared type may list.
MAX_IDS_PER_SEARCH = 100
#: Page contexts kept at most; the oldest are dropped first (clients then restart the search).
PAGE_CONTEXT_LIMIT = 10_000
#: Stands in for "another patient" when a tenant has only one configured patient.
PHANTOM_PATIENT = "sandbox-foreign-patient"
#: Faults that break a response's body (a Binary sends its FHIR form when one is set for it).
BODY_FAULTS = frozenset({"oversized_page", "malformed_json", "truncated", "reset_mid_body"})

_TYPE = "{type:[A-Z][A-Za-z]+}"
_ID = "{id:[A-Za-z0-9.-]{1,64}}"
_DATE_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?P<seconds>:\d{2}(?P<fraction>\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})"
)


def data_store(app: web.Application, state: SandboxState) -> DataStore:
    """The application's data store, created on first use (the admin API shares it)."""
    if DATA_KEY not in app:
        app[DATA_KEY] = DataStore(state.config, lambda tenant: state.urls(tenant).fhir_base)
    return app[DATA_KEY]


def setup_routes(app: web.Application, state: SandboxState) -> None:
    """Register search and read under every vendor's FHIR base shape."""
    store = data_store(app, state)
    for vendor, templates in ROUTE_TEMPLATES.items():
        server = FhirServer(state, store, vendor)
        base = templates["fhir_base"]
        # Types start with a capital letter, so ``metadata`` and ``.well-known`` never match here.
        app.router.add_get(f"{base}/{_TYPE}", server.search)
        everything = Everything(state, store, server.tenant_of)
        app.router.add_get(f"{base}/Patient/{_ID}/$everything", everything.handle)
        app.router.add_get(f"{base}/{_TYPE}/{_ID}", server.read)


class RefusedError(Exception):
    """A request refused with a ready response."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _bad_request(code: str, diagnostics: str) -> RefusedError:
    return RefusedError(operation_outcome(400, code, diagnostics))


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed compartment search."""

    patient_id: str
    categories: CategoryFilter = ()
    lower_ms: int | None = None
    upper_ms: int | None = None
    count: int = 50


@dataclass(frozen=True, slots=True)
class PageContext:
    """Where the next page of a search starts. ``trailing`` numbers injected empty pages."""

    tenant_id: str
    resource_type: str
    query: Query
    offset: int
    trailing: int = 0


class FhirServer:
    """Search and read for the tenants of one vendor profile."""

    def __init__(self, state: SandboxState, store: DataStore, vendor: Vendor) -> None:
        self.state = state
        self.store = store
        self.vendor = vendor

    def tenant_of(self, request: web.Request) -> TenantConfig | None:
        """The tenant a request names, if it is one of this vendor profile's."""
        return self._tenant(request)

    def _tenant(self, request: web.Request) -> TenantConfig | None:
        tenant = self.state.tenant(request.match_info["tenant"])
        return tenant if tenant is not None and tenant.vendor == self.vendor else None

    async def _admit(
        self, request: web.Request, served: Sequence[str], operation: Operation
    ) -> tuple[TenantConfig, Access] | web.StreamResponse:
        resource_type = request.match_info["type"]
        tenant = self._tenant(request)
        if tenant is None:
            return unknown_tenant()
        if resource_type not in served or resource_type in tenant.policy.unserved_types:
            return operation_outcome(
                404, "not-supported", f"The {operation} of {resource_type} is not supported"
            )
        fault = await faults.before_request(request, self.state, tenant, resource_type)
        if fault is not None:
            return fault
        access = authorize(request, self.state, tenant, resource_type, operation)
        if isinstance(access, web.Response):
            return access
        if access.patient_id is not None:
            fault = await faults.before_request(
                request, self.state, tenant, resource_type, patient_id=access.patient_id
            )
            if fault is not None:
                return fault
        return tenant, access

    async def search(self, request: web.Request) -> web.StreamResponse:
        """``GET {base}/{type}``: a searchset page."""
        admitted = await self._admit(request, SEARCHABLE_TYPES, "search")
        if isinstance(admitted, web.StreamResponse):
            return admitted
        tenant, access = admitted
        resource_type = request.match_info["type"]
        if resource_type in REFERENCED_TYPES:
            return await self._search_shared(request, tenant, access, resource_type)
        try:
            if resource_type in tenant.policy.unsearchable_types:
                raise RefusedError(_unsearchable(tenant, resource_type))
            if "pageContext" in request.query:
                context = self._recall(request, tenant, resource_type, access)
            else:
                query = parse_query(request.query, tenant.policy, resource_type, access)
                if query.patient_id != access.patient_id:
                    raise RefusedError(foreign_patient(tenant))
                context = PageContext(tenant.id, resource_type, query, 0)
            if not search_within(access.scopes, resource_type, context.query.categories):
                # A search that could find resources of categories the token was not granted.
                raise RefusedError(insufficient_scope(tenant, f"patient/{resource_type}.rs"))
        except RefusedError as refusal:
            return refusal.response
        body = self._page(request, tenant, context)
        return await faults.send(
            request, self.state, tenant, resource_type, body, patient_id=access.patient_id
        )

    async def _search_shared(
        self, request: web.Request, tenant: TenantConfig, access: Access, resource_type: str
    ) -> web.StreamResponse:
        """``GET {base}/{type}?_id=a,b,c`` of a shared type: the ones the tenant holds, one page."""
        if resource_type not in tenant.policy.id_search_types:
            return operation_outcome(
                400, "not-supported", f"{resource_type} cannot be searched here; read it by id"
            )
        unknown = set(request.query) - {"_id", "_count"}
        raw = request.query.getall("_id", [])
        if unknown or len(raw) != 1:
            return operation_outcome(
                400, "not-supported", f"{resource_type} searches take one _id parameter only"
            )
        ids = list(dict.fromkeys(i for i in raw[0].split(",") if i))
        if not ids or len(ids) > MAX_IDS_PER_SEARCH:
            return operation_outcome(400, "too-costly", f"_id lists 1 to {MAX_IDS_PER_SEARCH} ids")
        found = [
            entry
            for entry in (self.store.shared(tenant, resource_type, rid) for rid in ids)
            if entry is not None
        ]
        base = self.state.urls(tenant).fhir_base
        raw_query = request.rel_url.raw_query_string
        body = self._bundle(
            base,
            resource_type=resource_type,
            page=found,
            total=len(found),
            self_url=f"{base}/{resource_type}?{raw_query}",
            next_url=None,
        )
        return await faults.send(
            request, self.state, tenant, resource_type, body, patient_id=access.patient_id
        )

    def _recall(
        self, request: web.Request, tenant: TenantConfig, resource_type: str, access: Access
    ) -> PageContext:
        key = request.query["pageContext"]
        context = self.state.page_contexts.get(key)
        if (
            not isinstance(context, PageContext)
            or context.tenant_id != tenant.id
            or context.resource_type != resource_type
            or request.query.get("direction", "NEXT") != "NEXT"
        ):
            raise _bad_request("invalid", "Unknown or expired pageContext")
        if context.query.patient_id != access.patient_id:
            raise RefusedError(foreign_patient(tenant))
        return context

    def _page(self, request: web.Request, tenant: TenantConfig, context: PageContext) -> bytes:
        query = context.query
        resource_type = context.resource_type
        bucket = self.store.bucket(tenant, query.patient_id, resource_type)
        source: Sequence[Entry] = ()
        lo = hi = 0
        if bucket is not None:
            source, lo, hi = bucket.window(query.categories, query.lower_ms, query.upper_ms)
        page: list[Entry] = []
        has_next = False
        if context.trailing:
            has_next = context.trailing == 1
        elif query.count > 0:
            start = lo + context.offset
            end = min(hi, start + query.count)
            page = list(source[start:end])
            has_next = end < hi
        quirks = faults.paging_faults(
            self.state,
            tenant,
            resource_type,
            last_page=not has_next and context.trailing == 0,
        )
        base = self.state.urls(tenant).fhir_base
        raw_query = request.rel_url.raw_query_string
        self_url = f"{base}/{resource_type}" + (f"?{raw_query}" if raw_query else "")
        next_url = self._next_url(context, base, self_url, quirks, has_next=has_next)
        if quirks.foreign_patient_entry:
            page.append(self._foreign_entry(tenant, resource_type, query.patient_id))
        return self._bundle(
            base,
            resource_type=resource_type,
            page=page,
            total=hi - lo,
            self_url=self_url,
            next_url=next_url,
        )

    def _next_url(
        self,
        context: PageContext,
        base: str,
        self_url: str,
        quirks: faults.PagingFaults,
        *,
        has_next: bool,
    ) -> str | None:
        following: PageContext | None = None
        if context.trailing:
            following = replace(context, trailing=2) if has_next else None
        elif has_next:
            following = replace(context, offset=context.offset + context.query.count)
        elif quirks.empty_last_page_with_next:
            following = replace(context, trailing=1)
        next_url = self._remember(following, base) if following is not None else None
        if quirks.next_self:
            next_url = self_url
        if quirks.next_foreign:
            target = next_url or self_url
            next_url = faults.foreign_origin(self.state.origin) + target[len(self.state.origin) :]
        if quirks.next_escape is not None:
            next_url = base + quirks.next_escape
        return next_url

    def _remember(self, context: PageContext, base: str) -> str:
        key = str(uuid.uuid4())
        contexts = self.state.page_contexts
        contexts[key] = context
        while len(contexts) > PAGE_CONTEXT_LIMIT:
            del contexts[next(iter(contexts))]
        return f"{base}/{context.resource_type}?pageContext={key}&direction=NEXT"

    def _bundle(
        self,
        base: str,
        *,
        resource_type: str,
        page: Sequence[Entry],
        total: int,
        self_url: str,
        next_url: str | None,
    ) -> bytes:
        links = [{"relation": "self", "url": self_url}]
        if next_url is not None:
            links.append({"relation": "next", "url": next_url})
        head = orjson.dumps(
            {
                "resourceType": "Bundle",
                "id": str(uuid.uuid4()),
                "meta": {"lastUpdated": iso_ms(round(self.state.now() * 1000))},
                "type": "searchset",
                "total": total,
                "link": links,
            }
        )
        if not page:
            return head
        prefix = f'{{"fullUrl":"{base}/{resource_type}/'.encode()
        entries = b",".join(
            prefix + e.id.encode() + b'","resource":' + e.body + b',"search":{"mode":"match"}}'
            for e in page
        )
        return head[:-1] + b',"entry":[' + entries + b"]}"

    def _foreign_entry(self, tenant: TenantConfig, resource_type: str, patient_id: str) -> Entry:
        for spec in tenant.patients:
            if spec.id == patient_id:
                continue
            bucket = self.store.bucket(tenant, spec.id, resource_type)
            if bucket is not None and bucket.entries:
                return bucket.entries[0]
        field_name = patient_reference_field(resource_type)
        reference = {"reference": f"Patient/{PHANTOM_PATIENT}"}
        body: dict[str, object] = {}
        if field_name is not None:
            body[field_name] = [reference] if field_name == "target" else reference
        rid = PHANTOM_PATIENT if resource_type == "Patient" else f"{PHANTOM_PATIENT}-1"
        return make_entry(resource_type, rid, 1, round(self.state.now() * 1000), body)

    async def read(self, request: web.Request) -> web.StreamResponse:
        """``GET {base}/{type}/{id}``: one resource, 404, or 410 once deleted."""
        admitted = await self._admit(request, SERVED_TYPES, "read")
        if isinstance(admitted, web.StreamResponse):
            return admitted
        tenant, access = admitted
        resource_type = request.match_info["type"]
        rid = request.match_info["id"]
        if resource_type == "Binary":
            return await self._read_binary(request, tenant, access, rid)
        if resource_type in REFERENCED_TYPES:
            # Shared by the tenant's patients: any token granted the type may read them.
            shared = self.store.shared(tenant, resource_type, rid)
            if shared is None:
                return operation_outcome(404, "not-found", f"{resource_type}/{rid} was not found")
            return await faults.send(
                request,
                self.state,
                tenant,
                resource_type,
                shared.body,
                headers={"ETag": f'W/"{shared.version}"'},
                patient_id=access.patient_id,
            )
        if access.patient_id is not None:
            bucket = self.store.bucket(tenant, access.patient_id, resource_type)
            if bucket is not None:
                entry = bucket.by_id.get(rid)
                if entry is not None and not resource_within(
                    access.scopes, resource_type, entry.categories
                ):
                    return insufficient_scope(tenant, f"patient/{resource_type}.rs")
                if entry is not None:
                    headers = {"ETag": f'W/"{entry.version}"'}
                    return await faults.send(
                        request,
                        self.state,
                        tenant,
                        resource_type,
                        entry.body,
                        headers=headers,
                        patient_id=access.patient_id,
                    )
                if rid in bucket.deleted:
                    return operation_outcome(
                        410, "deleted", f"{resource_type}/{rid} has been deleted"
                    )
        owner = self._owner(tenant, resource_type, rid)
        if owner is not None and owner != access.patient_id:
            return foreign_patient(tenant)
        return operation_outcome(404, "not-found", f"{resource_type}/{rid} was not found")

    def _owner(self, tenant: TenantConfig, resource_type: str, rid: str) -> str | None:
        if resource_type == "Patient":
            return rid if self.store.patient(tenant, rid) is not None else None
        return self.store.owner(tenant, resource_type, rid)

    async def _read_binary(
        self, request: web.Request, tenant: TenantConfig, access: Access, rid: str
    ) -> web.StreamResponse:
        binary = self.store.binary(tenant, rid)
        if binary is None:
            return operation_outcome(404, "not-found", f"Binary/{rid} was not found")
        if binary.patient_id != access.patient_id:
            return foreign_patient(tenant)
        if any(f.target == "Binary" and f.kind in BODY_FAULTS for f in tenant.faults):
            # A broken or oversized body: sent as the FHIR Binary resource, chunked or cut short.
            body = binary.resource(rid, iso_ms(binary.meta_ms))
            return await faults.send(
                request, self.state, tenant, "Binary", body, patient_id=access.patient_id
            )
        return binary_response(request, tenant, rid, binary, iso_ms(binary.meta_ms))


def parse_query(
    params: MultiMapping[str], policy: TenantPolicy, resource_type: str, access: Access
) -> Query:
    """The search a first-page request asks for, checked against the tenant's policy."""
    count = _count(params, policy, resource_type)
    lower, upper = _last_updated(params, policy, resource_type)
    categories = _categories(params, policy, resource_type)
    if resource_type == "Patient":
        # A patient-context token searching Patient finds its own patient unless ``_id`` says.
        patient_id = params.get("_id") or access.patient_id or ""
    else:
        patient_id = _patient_param(params)
    return Query(patient_id, categories, lower, upper, count)


def _unsearchable(tenant: TenantConfig, resource_type: str) -> web.Response:
    """How the vendor answers a per-patient search of a type it serves only by id."""
    if tenant.vendor == "cerner":
        # Millennium wants one of its own parameters and says which.
        return operation_outcome(
            400, "required", f"{resource_type} searches require either _id or target"
        )
    return operation_outcome(
        400, "not-supported", f"Search is not supported for {resource_type}; read it by id"
    )


def _patient_param(params: MultiMapping[str]) -> str:
    # Coverage names its patient as ``beneficiary`` too (R4's ``patient`` is the same search).
    value = params.get("patient") or params.get("subject") or params.get("beneficiary")
    if not value:
        raise _bad_request("required", "The patient or subject search parameter is required")
    parts = value.split("/")
    if len(parts) >= 2 and parts[-2] != "Patient":
        raise _bad_request("invalid", f"{value} is not a Patient reference")
    return parts[-1]


def _count(params: MultiMapping[str], policy: TenantPolicy, resource_type: str) -> int:
    default = policy.count_defaults.get(resource_type, policy.default_count)
    maximum = policy.count_maxima.get(resource_type, policy.max_count)
    raw = params.get("_count")
    if raw is None:
        return min(default, maximum)
    if not raw.isdigit():
        raise _bad_request("invalid", "_count must be a non-negative integer")
    return min(int(raw), maximum)


def _last_updated(
    params: MultiMapping[str], policy: TenantPolicy, resource_type: str
) -> tuple[int | None, int | None]:
    values = params.getall("_lastUpdated", [])
    if not values:
        return None, None
    if resource_type not in policy.last_updated_types:
        raise _bad_request(
            "not-supported", f"_lastUpdated is not supported for {resource_type} searches"
        )
    lower: int | None = None
    upper: int | None = None
    for value in values:
        prefix, instant = (value[:2], value[2:]) if value[:2].isalpha() else ("eq", value)
        try:
            start, end = instant_range(instant)
        except ValueError as exc:
            raise _bad_request("invalid", f"_lastUpdated: {exc}") from None
        # FHIR compares ranges: the value covers [start, end) at its precision.
        bounds = {
            "gt": (end, None),
            "ge": (start, None),
            "lt": (None, start),
            "le": (None, end),
            "eq": (start, end),
        }.get(prefix)
        if bounds is None:
            raise _bad_request("not-supported", f"_lastUpdated prefix {prefix!r} is not supported")
        if bounds[0] is not None:
            lower = bounds[0] if lower is None else max(lower, bounds[0])
        if bounds[1] is not None:
            upper = bounds[1] if upper is None else min(upper, bounds[1])
    return lower, upper


def instant_range(value: str) -> tuple[int, int]:
    """The [start, end) epoch-millisecond range a FHIR date or dateTime covers at its precision."""
    if re.fullmatch(r"\d{4}", value):
        start = datetime(int(value), 1, 1, tzinfo=UTC)
        return to_ms(start), to_ms(start.replace(year=start.year + 1))
    if re.fullmatch(r"\d{4}-\d{2}", value):
        start = datetime(int(value[:4]), int(value[5:7]), 1, tzinfo=UTC)
        following = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
        return to_ms(start), to_ms(following)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        day = datetime.fromisoformat(value).replace(tzinfo=UTC)
        return to_ms(day), to_ms(day + timedelta(days=1))
    match = _DATE_TIME.fullmatch(value)
    if match is None:
        raise ValueError(f"{value!r} is not a FHIR instant with a time zone")
    start_ms = to_ms(datetime.fromisoformat(value))
    if match["fraction"]:
        return start_ms, start_ms + 1
    if match["seconds"]:
        return start_ms, start_ms + 1000
    return start_ms, start_ms + 60_000


def _accepted_token(token: str, accepted: str) -> bool:
    # A bare code is taken for an accepted ``system|code``; a system given must be the one named.
    system, bar, code = token.rpartition("|")
    a_system, a_bar, a_code = accepted.rpartition("|")
    return code == a_code and (not (bar and a_bar) or system == a_system)


def _categories(
    params: MultiMapping[str], policy: TenantPolicy, resource_type: str
) -> CategoryFilter:
    values = params.getall("category", [])
    accepted = policy.required_categories.get(resource_type)
    if accepted is not None:
        if not values:
            raise _bad_request(
                "required",
                f"{resource_type} searches require a category ({', '.join(accepted)})",
            )
        for value in values:
            for token in value.split(","):
                if not any(_accepted_token(token, a) for a in accepted):
                    raise _bad_request(
                        "value", f"category {token!r} is not supported for {resource_type}"
                    )
    return tuple(frozenset(v.split(",")) for v in values)
