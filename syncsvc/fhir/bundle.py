"""Reading an EHR's JSON answers: searchset Bundles and their links.

Kept apart from the HTTP client (and light to import): page-decoding processes use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from syncsvc.errors import Transient
from syncsvc.fhir.page_limits import PageTooLarge


@dataclass
class Page:
    """One searchset page: its ``match`` resources and its links."""

    resources: list[dict[str, Any]]
    next_url: str | None
    #: The Bundle's own ``self`` link, which a looping server repeats as ``next``.
    self_url: str | None = None


def parse_json(body: bytes) -> Any:
    """An EHR's JSON answer, parsed; malformed JSON is a transient failure of the EHR."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Transient("The EHR answered with malformed JSON") from exc


def parse_bundle(body: bytes, max_entries: int | None = None) -> Page:
    """A searchset page from its body: the ``match`` entries' resources and the links.

    Raises PageTooLarge when it has more than ``max_entries`` entries.
    """
    doc = parse_json(body)
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        raise Transient("The EHR answered a search with something other than a Bundle")
    resources: list[dict[str, Any]] = []
    entries = doc.get("entry") or []
    if not isinstance(entries, list):
        raise Transient("The EHR's Bundle.entry is not a list")
    if max_entries is not None and len(entries) > max_entries:
        raise PageTooLarge("entries", max_entries)
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
        resources=resources,
        next_url=links.get("next"),
        self_url=links.get("self"),
    )
