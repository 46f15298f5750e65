"""What the provider picker shows of a page of search results, for the page and its type-ahead.

One function turns a page of tenants into cards grouped by brand, so the server-rendered results
and the JSON the type-ahead reads cannot differ. A card holds only what a patient recognises a
provider by and the tenant's name the connect form posts: never a FHIR URL or an internal id.

A SMART User-access Brands bundle lists several portals or endpoints under one brand; their
tenants share a brand (their ``partOf`` brand's name, or the brand organisation's own name with
a portal name). Such tenants on one page are shown once under the brand, each portal beneath it
with what tells it apart from the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from syncsvc.db.models.connections import Tenant
from syncsvc.db.search_repo import SearchPage
from syncsvc.directory.logos import logo_path


@dataclass(frozen=True)
class Status:
    """The patient's own connection to a provider: its state's title and tone."""

    title: str
    tone: str


@dataclass(frozen=True)
class ProviderCard:
    """One provider as the picker shows it."""

    #: The tenant's name: what the connect form posts.
    tenant: str
    #: The organisation's name.
    name: str
    #: What the button says after "Connect to": the name, or within a brand what tells this
    #: portal apart from the brand's others.
    label: str
    #: The portal or brand name and the city and state, as one line ("" when the directory
    #: gives none).
    detail: str
    status: Status | None = None
    #: A logo syncsvc serves itself (never an EHR's URL), when the directory gave one.
    logo_url: str | None = None
    #: The logo's text alternative: the brand's name.
    logo_alt: str = ""

    def to_json(self) -> dict[str, Any]:
        """The card as the type-ahead reads it."""
        return {
            "tenant": self.tenant,
            "name": self.name,
            "label": self.label,
            "detail": self.detail,
            "status": None
            if self.status is None
            else {"title": self.status.title, "tone": self.status.tone},
            "logo_url": self.logo_url,
            "logo_alt": self.logo_alt,
        }


@dataclass(frozen=True)
class ProviderGroup:
    """Providers shown together: one brand's portals under its name, or a provider alone."""

    #: The brand's name over its portals; None for a provider shown alone.
    brand: str | None
    providers: tuple[ProviderCard, ...]

    def to_json(self) -> dict[str, Any]:
        """The group as the type-ahead reads it."""
        return {"brand": self.brand, "providers": [p.to_json() for p in self.providers]}


def place_of(tenant: Tenant) -> str:
    """The tenant's city and state, as a patient reads them."""
    return ", ".join(part for part in (tenant.city, tenant.state) if part)


def _detail(tenant: Tenant, *, said: tuple[str, ...]) -> str:
    """The portal (or brand) and place of ``tenant``, leaving out what the card already says."""
    parts = (tenant.portal_name or tenant.brand_name, place_of(tenant))
    return " · ".join(part for part in parts if part and part not in said)


def brand_of(tenant: Tenant) -> str | None:
    """The brand ``tenant`` is shown under with its siblings, if the directory gives one."""
    if tenant.directory is None:
        return None
    if tenant.brand_name:
        return tenant.brand_name
    # A brand organisation's own endpoints: its name on each, told apart by their portals.
    return tenant.display_name if tenant.portal_name else None


def _labels(tenants: Sequence[Tenant], brand: str) -> list[str]:
    """What tells each of a brand's portals apart: its own name where it differs from the
    brand's (an affiliate), else its portal's name, else its place; the next of these where two
    would read alike."""
    candidates = [
        [
            value
            for value in (t.display_name, t.portal_name, place_of(t))
            if value and value != brand
        ]
        for t in tenants
    ]
    fallback = [f"{t.display_name} ({index + 1})" for index, t in enumerate(tenants)]
    step = [0] * len(tenants)

    def label(index: int) -> str:
        values = candidates[index]
        return values[step[index]] if step[index] < len(values) else fallback[index]

    # Where two read alike, both move on to their next candidate (bounded: a few each).
    for _ in range(4):
        chosen = [label(i) for i in range(len(tenants))]
        alike = {value for value in chosen if chosen.count(value) > 1}
        if not alike:
            break
        for index, value in enumerate(chosen):
            if value in alike:
                step[index] += 1
    return [label(i) for i in range(len(tenants))]


def _logo(tenant: Tenant) -> dict[str, Any]:
    """The card's logo, served by syncsvc, named by the brand it stands for."""
    if tenant.logo_sha256 is None:
        return {}
    return {
        "logo_url": logo_path(tenant.logo_sha256),
        "logo_alt": tenant.brand_name or tenant.display_name,
    }


def group_page(
    tenants: Sequence[Tenant], status_of: Mapping[str, Status] | None = None
) -> tuple[ProviderGroup, ...]:
    """Cards for ``tenants`` (best first), a brand's portals together where it first appears."""
    status_of = status_of or {}
    order: list[str | None] = []
    members: dict[str, list[Tenant]] = {}
    alone: list[list[Tenant]] = []
    for tenant in tenants:
        brand = brand_of(tenant)
        if brand is None:
            alone.append([tenant])
            order.append(None)
            continue
        if brand not in members:
            members[brand] = []
            order.append(brand)
        members[brand].append(tenant)
    groups = []
    singles = iter(alone)
    for brand in order:
        found = next(singles) if brand is None else members[brand]
        if brand is None or len(found) == 1:
            tenant = found[0]
            card = ProviderCard(
                tenant=tenant.name,
                name=tenant.display_name,
                label=tenant.display_name,
                detail=_detail(tenant, said=(tenant.display_name,)),
                status=status_of.get(tenant.id),
                **_logo(tenant),
            )
            groups.append(ProviderGroup(None, (card,)))
            continue
        cards = tuple(
            ProviderCard(
                tenant=tenant.name,
                name=tenant.display_name,
                label=label,
                detail=_detail(tenant, said=(brand, label, tenant.display_name)),
                status=status_of.get(tenant.id),
                **_logo(tenant),
            )
            for tenant, label in zip(found, _labels(found, brand), strict=True)
        )
        groups.append(ProviderGroup(brand, cards))
    return tuple(groups)


@dataclass(frozen=True)
class PickerResults:
    """One page of the provider search as the picker shows it."""

    query: str
    page: int
    #: Whether the query was read as the start of a name (one or two letters a word).
    name_prefix: bool
    has_more: bool
    groups: tuple[ProviderGroup, ...]

    @property
    def count(self) -> int:
        """Providers on this page."""
        return sum(len(group.providers) for group in self.groups)

    def to_json(self) -> dict[str, Any]:
        """The page as the type-ahead reads it."""
        return {
            "query": self.query,
            "page": self.page,
            "name_prefix": self.name_prefix,
            "has_more": self.has_more,
            "count": self.count,
            "groups": [group.to_json() for group in self.groups],
        }


def picker_results(
    found: SearchPage,
    *,
    query: str,
    page: int,
    name_prefix: bool,
    has_more: bool,
    status_of: Mapping[str, Status] | None = None,
) -> PickerResults:
    """The picker's view of one page of tenants found."""
    return PickerResults(query, page, name_prefix, has_more, group_page(found.tenants, status_of))
