"""Reading a published endpoint directory: the bundle's index of Endpoints and Organizations, which
published shape it is, and what its Organization and Endpoint entries say (brands, aliases,
portals, connection types). :mod:`syncsvc.directory.endpoint_import` turns this into tenants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

FHIR_REST = "hl7-fhir-rest"
#: A name a directory gives (organisation, brand, portal, alias) is cut to this (its column).
NAME_LENGTH = 200
#: What a skip sentence quotes from the bundle (an id, a reference, an address) is cut to this.
QUOTE_LENGTH = 120
#: Logo URLs tried per brand (SMART lets a brand list several sizes and formats).
MAX_LOGOS = 3
#: Aliases kept per provider: a hostile directory must not grow one search row without bound.
MAX_ALIASES = 20
#: Oracle Health serves patient access from these domains (production, code and sandbox).
CERNER_DOMAINS = ("cerner.com", "sandboxcerner.com", "sandboxcernerpowerchart.com")
#: Epic customers often serve FHIR under their own names; only these hosts are evidently Epic.
EPIC_DOMAINS = ("epic.com", "epichosted.com")
#: Extension suffixes that mark an Organization as a brand with user-facing details. The first two
#: are the SMART 2.2 names; the rest are the ballot-era and Argonaut names still found in the wild.
BRAND_DETAIL_SUFFIXES = (
    "/organization-portal",
    "/organization-brand",
    "/brand-logo",
    "/patient-access-url",
    "/patient-access-name",
)
#: Single-valued portal URL extensions used before ``organization-portal`` existed.
LEGACY_PORTAL_URL_SUFFIXES = ("/patient-access-url", "/user-access-url")


Format = Literal["brands", "oracle-current", "oracle-legacy"]


@dataclass(frozen=True)
class Entry:
    """A top-level resource of the bundle, or an Organization contained in an Endpoint."""

    key: str
    resource: dict[str, Any]

    @property
    def label(self) -> str:
        """How a skip sentence names this resource (a hostile id or fullUrl is cut short)."""
        return quoted(self.key)


class Index:
    """Top-level Endpoints and Organizations, findable by fullUrl or ``Type/id``."""

    def __init__(self, entries: list[Any]) -> None:
        self.endpoints: dict[str, Entry] = {}
        self.organizations: dict[str, Entry] = {}
        self.by_position: dict[int, Entry] = {}
        used: set[str] = set()
        for position, raw in enumerate(entries, start=1):
            entry = object_of(raw)
            resource = object_of(entry.get("resource"))
            if not resource:
                continue
            kind = resource.get("resourceType")
            if kind == "Endpoint":
                table = self.endpoints
            elif kind == "Organization":
                table = self.organizations
            else:
                continue
            local = text_of(resource.get("id"))
            full_url = text_of(entry.get("fullUrl"))
            # Keys name resources in skip sentences, so prefer the short form; published bundles
            # do reuse ids, so fall back until the key is unique.
            candidates = (f"{kind}/{local}" if local else None, full_url)
            key = next(
                (c for c in candidates if c and c not in used), f"{kind} in entry {position}"
            )
            used.add(key)
            item = Entry(key, resource)
            self.by_position[position] = item
            # First one wins: a later resource reusing an id must not redirect earlier references.
            for alias in (full_url, f"{kind}/{local}" if local else None):
                if alias and alias not in table:
                    table[alias] = item

    def resolve(self, reference: Any, kind: Literal["Endpoint", "Organization"]) -> Entry | None:
        """The resource a Reference points at, if it is in the bundle."""
        ref = text_of(object_of(reference).get("reference"))
        if not ref:
            return None
        table = self.endpoints if kind == "Endpoint" else self.organizations
        if ref in table:
            return table[ref]
        # An absolute reference to a resource whose entry carries only a relative id.
        parts = ref.rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2] == kind:
            return table.get(f"{kind}/{parts[-1]}")
        return None


def detect_format(index: Index) -> Format:
    """Which published shape this is; the shapes overlap, so decide on the clearest evidence."""
    if any(contained_organizations(ep.resource) for ep in index.endpoints.values()):
        return "oracle-legacy"
    if any(has_brand_details(org.resource) for org in index.organizations.values()):
        return "brands"
    # Oracle's current list is structurally a brands bundle without brand details; what sets it
    # apart is that every endpoint it lists is served from an Oracle Health (Cerner) host.
    hosts = set()
    for item in unique_entries(index.endpoints.values()):
        host = host_of(text_of(item.resource.get("address")))
        if host is not None:
            hosts.add(host)
    if hosts and all(on_domain(host, CERNER_DOMAINS) for host in hosts):
        return "oracle-current"
    return "brands"


@dataclass(frozen=True)
class Address:
    """Where an Organization is, as its first usable ``Organization.address`` says."""

    street: str | None
    city: str | None
    state: str | None
    postal_code: str | None


@dataclass
class Brand:
    """An Organization as a patient would see it."""

    key: str
    organization: dict[str, Any]
    name: str | None
    aliases: tuple[str, ...]
    address: Address | None = None


def address_of(org: dict[str, Any]) -> Address | None:
    """The first address with a city, state or postal code (lines joined by commas)."""
    addresses = org.get("address")
    for raw in addresses if isinstance(addresses, list) else []:
        item = object_of(raw)
        lines = item.get("line")
        street = (
            ", ".join(line.strip() for line in lines if isinstance(line, str) and line.strip())
            if isinstance(lines, list)
            else None
        )
        found = Address(
            street=(street or None) and street[:200],
            city=short_text(item.get("city"), 100),
            state=short_text(item.get("state"), 50),
            postal_code=short_text(item.get("postalCode"), 20),
        )
        if found.city or found.state or found.postal_code:
            return found
    return None


def portal_name_of(org: dict[str, Any]) -> str | None:
    """The first portal name the Organization's brand extensions give."""
    for ext in extensions_of(org):
        url = text_of(ext.get("url")) or ""
        if url.endswith("/organization-portal"):
            for part in extensions_of(ext):
                if part.get("url") == "portalName" and (
                    name := short_text(part.get("valueString"))
                ):
                    return name
        elif url.endswith("/patient-access-name") and (name := short_text(ext.get("valueString"))):
            return name
    return None


def quoted(text: str, limit: int = QUOTE_LENGTH) -> str:
    """``text`` as a sentence quotes it: cut to ``limit`` characters, the cut marked."""
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def logo_urls_of(org: dict[str, Any]) -> tuple[str, ...]:
    """The logos an Organization's brand extensions give, in order, at most :data:`MAX_LOGOS`.

    SMART 2.2: ``organization-brand``'s ``brandLogo`` (``valueUrl``, repeated for other sizes
    or formats), then ``organization-portal``'s ``portalLogo``; ballot-era bundles used a
    single ``brand-logo`` extension. Each is an https or ``data:`` URL, checked when fetched.
    """
    found: list[str] = []
    for ext in extensions_of(org):
        url = text_of(ext.get("url")) or ""
        if url.endswith("/brand-logo"):
            parts = [ext]
        elif url.endswith(("/organization-brand", "/organization-portal")):
            parts = [p for p in extensions_of(ext) if p.get("url") in ("brandLogo", "portalLogo")]
        else:
            continue
        for part in parts:
            link = text_of(part.get("valueUrl")) or text_of(part.get("valueString"))
            if link and link.strip() not in found:
                found.append(link.strip())
            if len(found) >= MAX_LOGOS:
                return tuple(found)
    return tuple(found)


def short_text(value: Any, limit: int = NAME_LENGTH) -> str | None:
    """A string the directory gives, stripped and cut to what its column holds; None if empty."""
    found = text_of(value)
    return found.strip()[:limit] or None if found else None


def connection_codes(value: Any) -> list[str]:
    """Codes of ``Endpoint.connectionType``: a Coding in R4, CodeableConcepts in R5."""
    items = value if isinstance(value, list) else [value]
    codes: list[str] = []
    for item in items:
        concept = object_of(item)
        codings = concept.get("coding")
        for coding in codings if isinstance(codings, list) else [concept]:
            code = text_of(object_of(coding).get("code"))
            if code:
                codes.append(code)
    return codes


def fhir_versions(endpoint: dict[str, Any]) -> list[str]:
    return [
        code
        for ext in extensions_of(endpoint)
        if (text_of(ext.get("url")) or "").endswith("/endpoint-fhir-version")
        and (code := text_of(ext.get("valueCode")))
    ]


def brand_of(org: Entry) -> Brand:
    aliases = org.resource.get("alias")
    found = (short_text(a) for a in aliases[:MAX_ALIASES]) if isinstance(aliases, list) else ()
    names = tuple(a for a in found if a)
    name = short_text(org.resource.get("name"))
    return Brand(org.key, org.resource, name, names, address_of(org.resource))


def endpoint_references(org: dict[str, Any]) -> list[Any]:
    """``Organization.endpoint`` plus any portal endpoint missing from it, in order."""
    refs = list(org.get("endpoint") or []) if isinstance(org.get("endpoint"), list) else []
    seen = {text_of(object_of(r).get("reference")) for r in refs}
    for portal in portals_of(org):
        for ref in portal.endpoints:
            if ref not in seen:
                seen.add(ref)
                refs.append({"reference": ref})
    return refs


@dataclass(frozen=True)
class Portal:
    url: str | None
    endpoints: tuple[str, ...]
    name: str | None = None


def portals_of(org: dict[str, Any]) -> list[Portal]:
    portals = []
    for ext in extensions_of(org):
        url = text_of(ext.get("url")) or ""
        if url.endswith("/organization-portal"):
            link = None
            name = None
            endpoints = []
            for part in extensions_of(ext):
                if part.get("url") == "portalName":
                    name = short_text(part.get("valueString")) or name
                elif part.get("url") == "portalUrl":
                    # SMART's own example carries portal strings as valueUrl, so accept either.
                    link = text_of(part.get("valueUrl")) or text_of(part.get("valueString")) or link
                elif part.get("url") == "portalEndpoint":
                    target = text_of(object_of(part.get("valueReference")).get("reference"))
                    if target:
                        endpoints.append(target)
            portals.append(Portal(web_url(link), tuple(endpoints), name))
        elif url.endswith(LEGACY_PORTAL_URL_SUFFIXES):
            portals.append(Portal(web_url(text_of(ext.get("valueUrl"))), ()))
    return portals


def portal_for(org: dict[str, Any], endpoint: Entry, index: Index) -> str | None:
    first = None
    for portal in portals_of(org):
        if portal.url is None:
            continue
        first = first or portal.url
        for ref in portal.endpoints:
            target = index.resolve({"reference": ref}, "Endpoint")
            if target is not None and target.key == endpoint.key:
                return portal.url
    return first


def portal_name_for(org: dict[str, Any], endpoint: Entry, index: Index) -> str | None:
    """The name of the brand's portal that serves ``endpoint``, else its first portal name."""
    for portal in portals_of(org):
        for ref in portal.endpoints:
            target = index.resolve({"reference": ref}, "Endpoint")
            if portal.name and target is not None and target.key == endpoint.key:
                return portal.name
    return portal_name_of(org)


def has_brand_details(org: dict[str, Any]) -> bool:
    return any(
        (text_of(ext.get("url")) or "").endswith(BRAND_DETAIL_SUFFIXES)
        for ext in extensions_of(org)
    )


def contained_organizations(endpoint: dict[str, Any]) -> dict[str, dict[str, Any]]:
    contained = endpoint.get("contained")
    found: dict[str, dict[str, Any]] = {}
    for item in contained if isinstance(contained, list) else []:
        resource = object_of(item)
        if resource.get("resourceType") == "Organization":
            found[text_of(resource.get("id")) or ""] = resource
    return found


def extensions_of(element: dict[str, Any]) -> list[dict[str, Any]]:
    extensions = element.get("extension")
    if not isinstance(extensions, list):
        return []
    return [ext for ext in extensions if isinstance(ext, dict)]


def object_of(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (absent and malformed read alike)."""
    return value if isinstance(value, dict) else {}


def text_of(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def unique_entries(entries: Any) -> list[Entry]:
    """Each indexed resource once (the index holds it under fullUrl and ``Type/id``)."""
    seen: dict[str, Entry] = {}
    for entry in entries:
        seen.setdefault(entry.key, entry)
    return list(seen.values())


def host_of(url: str | None) -> str | None:
    if not url:
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return host.lower() if host else None


def on_domain(host: str, domains: tuple[str, ...]) -> bool:
    return any(host == d or host.endswith(f".{d}") for d in domains)


def web_url(url: str | None) -> str | None:
    """``url`` if it is an absolute http(s) link a patient could open, else None."""
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    return url.strip() if parts.scheme in ("http", "https") and parts.netloc else None
