"""Guarding and canonicalising a page of pulled resources: the CPU part of storing it.

Nothing here touches the database or the network, so a page can be prepared in a worker process
(:mod:`syncsvc.sync.pipeline.decode`) as well as in the event loop's thread.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from syncsvc.db.columns import MAX_ID_LENGTH
from syncsvc.sync.pipeline.compartment import belongs_to_patient, canonical, resource_identity

ENTERED_IN_ERROR = "entered-in-error"


class Prepared(NamedTuple):
    """A resource ready to store: its identity, meta, canonical bytes and hash.

    A named tuple: one is made per resource, and a frozen dataclass costs several times more.
    """

    resource_id: str
    version_id: str | None
    last_updated: dt.datetime | None
    body: bytes
    content_hash: str
    entered_in_error: bool


@dataclass
class PreparedPage:
    """The storable resources of one page, and what the guard refused."""

    resource_type: str
    items: list[Prepared] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    #: The newest ``meta.lastUpdated`` among ``items``.
    max_last_updated: dt.datetime | None = None


def is_entered_in_error(resource: dict[str, Any]) -> bool:
    """Whether a resource says it was entered in error (FHIR R4 spells it per type)."""
    if resource.get("status") == ENTERED_IN_ERROR:
        return True
    if resource.get("lifecycleStatus") == ENTERED_IN_ERROR:  # Goal
        return True
    verification = resource.get("verificationStatus")  # Condition, AllergyIntolerance
    if isinstance(verification, dict):
        for coding in verification.get("coding") or ():
            if isinstance(coding, dict) and coding.get("code") == ENTERED_IN_ERROR:
                return True
    return False


def _parse_instant(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    # An instant without an offset is not a FHIR instant; it cannot be placed in time.
    if moment.tzinfo is None:
        return None
    return moment if moment.tzinfo is dt.UTC else moment.astimezone(dt.UTC)


def prepare_page(
    resources: Iterable[dict[str, Any]],
    resource_type: str,
    patient_id: str,
    base: str | None = None,
) -> PreparedPage:
    """Guard and canonicalise a page's resources; the same id twice keeps the last one.

    ``base`` is the connection's FHIR base: absolute patient references must be under it.
    """
    page = PreparedPage(resource_type)
    by_id: dict[str, Prepared] = {}
    newest: dt.datetime | None = None
    for resource in resources:
        identity = resource_identity(resource)
        if (
            identity is None
            or identity[0] != resource_type
            or not belongs_to_patient(resource, patient_id, base)
        ):
            page.rejected.append(_describe(resource))
            continue
        meta = resource.get("meta")
        meta = meta if isinstance(meta, dict) else {}
        version = meta.get("versionId")
        last_updated = _parse_instant(meta.get("lastUpdated"))
        try:
            stored = canonical(resource)
        except orjson.JSONEncodeError:  # nested deeper than orjson writes: hostile, not a record
            page.rejected.append(_describe(resource))
            continue
        by_id[identity[1]] = Prepared(
            identity[1],
            version if isinstance(version, str) and len(version) <= MAX_ID_LENGTH else None,
            last_updated,
            stored.body,
            stored.content_hash,
            is_entered_in_error(resource),
        )
        if last_updated is not None and (newest is None or last_updated > newest):
            newest = last_updated
    page.items = list(by_id.values())
    page.max_last_updated = newest
    return page


def prepare_shared(
    resources: Iterable[dict[str, Any]], resource_type: str, wanted: Collection[str]
) -> PreparedPage:
    """Canonicalise shared resources read for a record (a Practitioner, a Location ...).

    They name no patient, so the compartment guard does not apply; instead only a resource of
    the type and one of the ``wanted`` ids asked for is kept, and anything else an EHR adds to
    the answer is refused and counted.
    """
    page = PreparedPage(resource_type)
    by_id: dict[str, Prepared] = {}
    for resource in resources:
        identity = resource_identity(resource)
        if identity is None or identity[0] != resource_type or identity[1] not in wanted:
            page.rejected.append(_describe(resource))
            continue
        meta = resource.get("meta")
        meta = meta if isinstance(meta, dict) else {}
        version = meta.get("versionId")
        try:
            stored = canonical(resource)
        except orjson.JSONEncodeError:
            page.rejected.append(_describe(resource))
            continue
        by_id[identity[1]] = Prepared(
            identity[1],
            version if isinstance(version, str) and len(version) <= MAX_ID_LENGTH else None,
            _parse_instant(meta.get("lastUpdated")),
            stored.body,
            stored.content_hash,
            is_entered_in_error(resource),
        )
    page.items = list(by_id.values())
    return page


def _describe(resource: dict[str, Any]) -> str:
    resource_type, resource_id = resource.get("resourceType"), resource.get("id")
    shown_type = resource_type if isinstance(resource_type, str) else "?"
    shown_id = resource_id if isinstance(resource_id, str) else "?"
    return f"{shown_type[:64]}/{shown_id[:64]}"
