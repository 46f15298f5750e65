"""``Patient/$everything`` pages: one searchset holding every type of the patient's record.

A first (full) sync may ask for the whole compartment in one paged operation instead of one
search per type, where the tenant's plan turns it on and the server's CapabilityStatement lists
it (:func:`usable`). Its pages are split by resource type here and handed to each type's page
sink by :class:`~syncsvc.sync.pull.PullRun`; a type it returned nothing of is searched on its
own all the same, and any failure of the operation falls back to the per-type searches.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from syncsvc.errors import Transient
from syncsvc.fhir.plans import VendorPlan
from syncsvc.smart.discovery import SmartConfiguration
from syncsvc.sync.pull_plan import PlannedType


@dataclass
class EverythingPage:
    """One page of ``$everything``: its links and its resources by type."""

    url: str
    next_url: str | None
    self_url: str | None
    by_type: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def usable(
    vendor_plan: VendorPlan, config: SmartConfiguration | None, planned: Sequence[PlannedType]
) -> bool:
    """Whether this run pulls through ``$everything`` first.

    Only a run that pulls every planned type in full (a first sync, a forced full run): an
    incremental pull searches each type after its own watermark, which the operation cannot.
    """
    return (
        vendor_plan.everything
        and config is not None
        and config.patient_everything
        and len(planned) > 1
        and all(one.mode == "full" for one in planned)
    )


def decoder(max_entries: int | None) -> Callable[[str, bytes], Awaitable[EverythingPage]]:
    """A page decoder for ``$everything`` searchsets (raises Transient for a malformed one)."""

    async def decode(url: str, body: bytes) -> EverythingPage:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Transient("The EHR answered $everything with malformed JSON") from exc
        if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
            raise Transient("The EHR answered $everything with something other than a Bundle")
        entries = doc.get("entry") or []
        links = doc.get("link") or []
        if not isinstance(entries, list) or not isinstance(links, list):
            raise Transient("The EHR answered $everything with a malformed Bundle")
        if max_entries is not None and len(entries) > max_entries:
            raise Transient("An $everything page held more entries than allowed")
        page = EverythingPage(url, _link(links, "next"), _link(links, "self"))
        for entry in entries:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str):
                page.by_type.setdefault(resource["resourceType"], []).append(resource)
        return page

    return decode


def _link(links: list[Any], relation: str) -> str | None:
    for link in links:
        if isinstance(link, dict) and link.get("relation") == relation:
            url = link.get("url")
            return url if isinstance(url, str) else None
    return None
