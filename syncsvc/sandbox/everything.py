"""``Patient/{id}/$everything`` of the sandbox: the patient's whole compartment, paged.

Offered where the tenant's policy says so (``everything``; the generic shape), and advertised
there in the CapabilityStatement. The answer holds every resource of the types the token's
scopes cover (the Patient first, then each served compartment type), paged under the same
``_count`` caps as searches, with ``next`` links under the tenant's base only.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson
from aiohttp import web

from . import faults
from .config import COMPARTMENT_TYPES, TenantConfig
from .data import DataStore, Entry, iso_ms
from .enforce import authorize, foreign_patient, unknown_tenant
from .outcomes import operation_outcome
from .scopes import covers
from .state import SandboxState

#: The name and canonical definition a CapabilityStatement advertises the operation with.
OPERATION_NAME = "everything"
OPERATION_DEFINITION = "http://hl7.org/fhir/OperationDefinition/Patient-everything"
PAGE_CONTEXT_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class EverythingContext:
    """Where the next page of one patient's ``$everything`` starts."""

    tenant_id: str
    patient_id: str
    types: tuple[str, ...]
    count: int
    offset: int


class Everything:
    """The operation for the tenants of one vendor profile."""

    def __init__(
        self,
        state: SandboxState,
        store: DataStore,
        tenant_of: Callable[[web.Request], TenantConfig | None],
    ) -> None:
        self.state = state
        self.store = store
        self._tenant_of = tenant_of

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET {base}/Patient/{id}/$everything``."""
        tenant = self._tenant_of(request)
        if tenant is None:
            return unknown_tenant()
        if not tenant.policy.everything:
            return operation_outcome(404, "not-supported", "Patient/$everything is not supported")
        fault = await faults.before_request(request, self.state, tenant, "Patient")
        if fault is not None:
            return fault
        access = authorize(request, self.state, tenant, "Patient", "read")
        if isinstance(access, web.Response):
            return access
        patient_id = request.match_info["id"]
        if access.patient_id != patient_id:
            return foreign_patient(tenant)
        key = request.query.get("pageContext")
        if key is not None:
            context = self.state.page_contexts.get(key)
            if not isinstance(context, EverythingContext) or context.tenant_id != tenant.id:
                return operation_outcome(400, "invalid", "Unknown or expired pageContext")
            if context.patient_id != patient_id:
                return foreign_patient(tenant)
        else:
            raw = request.query.get("_count")
            if raw is not None and not raw.isdigit():
                return operation_outcome(400, "invalid", "_count must be a non-negative integer")
            policy = tenant.policy
            count = min(int(raw) if raw else policy.default_count, policy.max_count)
            served = ("Patient", *COMPARTMENT_TYPES)
            types = tuple(
                t
                for t in served
                if t not in policy.unserved_types and covers(access.scopes, t, "search")
            )
            context = EverythingContext(tenant.id, patient_id, types, max(count, 1), 0)
        body = self._page(tenant, context)
        return await faults.send(
            request, self.state, tenant, "Patient", body, patient_id=patient_id
        )

    def _page(self, tenant: TenantConfig, context: EverythingContext) -> bytes:
        page: list[tuple[str, Entry]] = []
        skip, total = context.offset, 0
        for resource_type in context.types:
            bucket = self.store.bucket(tenant, context.patient_id, resource_type)
            entries: Sequence[Entry] = bucket.entries if bucket is not None else ()
            total += len(entries)
            if len(page) >= context.count:
                continue
            if skip >= len(entries):
                skip -= len(entries)
                continue
            for entry in entries[skip : skip + context.count - len(page)]:
                page.append((resource_type, entry))
            skip = 0
        base = self.state.urls(tenant).fhir_base
        path = f"{base}/Patient/{context.patient_id}/$everything"
        links = [{"relation": "self", "url": path}]
        following = context.offset + len(page)
        if page and following < total:
            key = str(uuid.uuid4())
            contexts = self.state.page_contexts
            contexts[key] = EverythingContext(
                context.tenant_id, context.patient_id, context.types, context.count, following
            )
            while len(contexts) > PAGE_CONTEXT_LIMIT:
                del contexts[next(iter(contexts))]
            links.append({"relation": "next", "url": f"{path}?pageContext={key}"})
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
        joined = b",".join(
            f'{{"fullUrl":"{base}/{t}/'.encode()
            + e.id.encode()
            + b'","resource":'
            + e.body
            + b',"search":{"mode":"match"}}'
            for t, e in page
        )
        return head[:-1] + b',"entry":[' + joined + b"]}"
