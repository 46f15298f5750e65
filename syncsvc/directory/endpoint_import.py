"""Endpoint directories: turning a published bundle of FHIR bases into tenants to register.

``syncsvc tenants import FILE`` reads one of three published shapes, all FHIR R4 ``Bundle``s:

``brands``
    SMART App Launch 2.2 "User-access Brands and Endpoints": ``Organization`` brands list their
    ``Endpoint``s in ``Organization.endpoint`` (portal details ride in the ``organization-portal``
    extension, former names in ``alias``, affiliated brands point at a parent with ``partOf``).
    Ballot-era bundles linked the other way, ``Endpoint.managingOrganization``; both are read.
``oracle-current``
    Oracle Health's patient-access list as ``Endpoint`` and ``Organization`` entries side by side,
    the Organization naming its Endpoint in ``Organization.endpoint``.
``oracle-legacy``
    The older Oracle Health list: one ``Endpoint`` entry per tenant with the Organization
    *contained* in it and pointed at from ``managingOrganization``.

The result has one :class:`ImportedEndpoint` per distinct FHIR base, with a stable operator name,
so importing the same file twice registers the same tenants. Anything not imported is explained,
one sentence per entry, in :attr:`ImportReport.skipped`.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson

from syncsvc.errors import ConfigError, DiscoveryError
from syncsvc.netguard import endpoint_problem, is_loopback_host
from syncsvc.smart.discovery import normalise_base

#: Larger files are refused before parsing: the whole document is held in memory.
MAX_FILE_BYTES = 50 * 1024 * 1024
#: Tenant names are at most this long (``TenantSpec`` enforces the same bound).
MAX_NAME_LENGTH = 63

Format = Literal["brands", "oracle-current", "oracle-legacy"]
Vendor = Literal["cerner", "epic", "generic"]

_FHIR_REST = "hl7-fhir-rest"
#: Oracle Health serves patient access from these domains (production, code and sandbox).
_CERNER_DOMAINS = ("cerner.com", "sandboxcerner.com", "sandboxcernerpowerchart.com")
#: Epic customers often serve FHIR under their own names; only these hosts are evidently Epic.
_EPIC_DOMAINS = ("epic.com", "epichosted.com")
#: Extension suffixes that mark an Organization as a brand with user-facing details. The first two
#: are the SMART 2.2 names; the rest are the ballot-era and Argonaut names still found in the wild.
_BRAND_DETAIL_SUFFIXES = (
    "/organization-portal",
    "/organization-brand",
    "/brand-logo",
    "/patient-access-url",
    "/patient-access-name",
)
#: Single-valued portal URL extensions used before ``organization-portal`` existed.
_LEGACY_PORTAL_URL_SUFFIXES = ("/patient-access-url", "/user-access-url")


@dataclass(frozen=True)
class ImportedEndpoint:
    """One FHIR base to register as a tenant, with the names a patient would recognise."""

    name: str
    display_name: str
    fhir_base: str
    vendor: Vendor
    source_id: str | None
    portal_url: str | None
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class ImportReport:
    """What a bundle yielded: the endpoints to register and why anything else was left out."""

    endpoints: tuple[ImportedEndpoint, ...]
    skipped: tuple[str, ...]
    format: Format


def read_endpoint_file(path: Path, *, allow_loopback: bool = False) -> ImportReport:
    """Read and parse an endpoint bundle file; every failure is a ConfigError naming the file.

    ``allow_loopback``: see :func:`parse_endpoint_bundle`.
    """
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(_too_large(path))
        with path.open("rb") as handle:
            # Read one byte past the limit: stat() reports 0 for pipes and special files.
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"Cannot read endpoint file {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(_too_large(path))
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"Endpoint file {path} is not valid JSON: {exc}") from exc
    try:
        return parse_endpoint_bundle(document, allow_loopback=allow_loopback)
    except ConfigError as exc:
        raise ConfigError(f"Endpoint file {path}: {exc.message}") from exc


def parse_endpoint_bundle(document: Any, *, allow_loopback: bool = False) -> ImportReport:
    """Parse a brands or Oracle Health endpoint bundle; ConfigError if it is neither.

    An endpoint on this machine (``127.0.0.1``, ``localhost``…) is skipped unless
    ``allow_loopback``: it would become a loopback tenant, whose discovery may name any loopback
    endpoint, and a published bundle has no business naming this machine.
    """
    if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
        found = document.get("resourceType") if isinstance(document, dict) else None
        what = f"a {found}" if isinstance(found, str) else "not a FHIR resource"
        raise ConfigError(f"Expected a FHIR Bundle of endpoints, but the document is {what}.")
    entries = document.get("entry", [])
    if not isinstance(entries, list):
        raise ConfigError("The Bundle's 'entry' is not a list.")
    index = _Index(entries)
    if not index.endpoints:
        raise ConfigError(
            "The Bundle holds no Endpoint resources; expected a SMART User-access Brands "
            "bundle or an Oracle Health endpoint bundle."
        )
    importer = _Importer(index, _detect_format(index), allow_loopback=allow_loopback)
    for position, entry in enumerate(entries, start=1):
        importer.visit(position, entry)
    return importer.finish()


# --- reading the bundle -------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """A top-level resource of the bundle, or an Organization contained in an Endpoint."""

    key: str
    resource: dict[str, Any]

    @property
    def label(self) -> str:
        """How a skip sentence names this resource."""
        return self.key


class _Index:
    """Top-level Endpoints and Organizations, findable by fullUrl or ``Type/id``."""

    def __init__(self, entries: list[Any]) -> None:
        self.endpoints: dict[str, _Entry] = {}
        self.organizations: dict[str, _Entry] = {}
        self.by_position: dict[int, _Entry] = {}
        used: set[str] = set()
        for position, raw in enumerate(entries, start=1):
            entry = _obj(raw)
            resource = _obj(entry.get("resource"))
            if not resource:
                continue
            kind = resource.get("resourceType")
            if kind == "Endpoint":
                table = self.endpoints
            elif kind == "Organization":
                table = self.organizations
            else:
                continue
            local = _str(resource.get("id"))
            full_url = _str(entry.get("fullUrl"))
            # Keys name resources in skip sentences, so prefer the short form; published bundles
            # do reuse ids, so fall back until the key is unique.
            candidates = (f"{kind}/{local}" if local else None, full_url)
            key = next(
                (c for c in candidates if c and c not in used), f"{kind} in entry {position}"
            )
            used.add(key)
            item = _Entry(key, resource)
            self.by_position[position] = item
            # First one wins: a later resource reusing an id must not redirect earlier references.
            for alias in (full_url, f"{kind}/{local}" if local else None):
                if alias and alias not in table:
                    table[alias] = item

    def resolve(self, reference: Any, kind: Literal["Endpoint", "Organization"]) -> _Entry | None:
        """The resource a Reference points at, if it is in the bundle."""
        ref = _str(_obj(reference).get("reference"))
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


def _detect_format(index: _Index) -> Format:
    """Which published shape this is; the shapes overlap, so decide on the clearest evidence."""
    if any(_contained_organizations(ep.resource) for ep in index.endpoints.values()):
        return "oracle-legacy"
    if any(_has_brand_details(org.resource) for org in index.organizations.values()):
        return "brands"
    # Oracle's current list is structurally a brands bundle without brand details; what sets it
    # apart is that every endpoint it lists is served from an Oracle Health (Cerner) host.
    hosts = set()
    for item in _unique(index.endpoints.values()):
        host = _host(_str(item.resource.get("address")))
        if host is not None:
            hosts.add(host)
    if hosts and all(_on_domain(host, _CERNER_DOMAINS) for host in hosts):
        return "oracle-current"
    return "brands"


# --- building the result ------------------------------------------------------------------


@dataclass
class _Brand:
    """An Organization as a patient would see it."""

    key: str
    organization: dict[str, Any]
    name: str | None
    aliases: tuple[str, ...]


@dataclass
class _Pending:
    """An endpoint being assembled; it becomes an ImportedEndpoint once named."""

    endpoint_key: str
    display_name: str
    fhir_base: str
    vendor: Vendor
    source_id: str | None
    portal_url: str | None
    aliases: list[str] = field(default_factory=list)

    def add_aliases(self, names: tuple[str, ...]) -> None:
        for name in names:
            if name != self.display_name and name not in self.aliases:
                self.aliases.append(name)


class _Importer:
    """Walks the entries in bundle order and keeps one endpoint per FHIR base."""

    def __init__(self, index: _Index, fmt: Format, *, allow_loopback: bool) -> None:
        self.index = index
        self.format: Format = fmt
        self.allow_loopback = allow_loopback
        self.skipped: list[str] = []
        self.by_base: dict[str, _Pending] = {}
        #: Each checked Endpoint's base, or None if it was skipped (reported once).
        self.checked: dict[str, str | None] = {}
        #: Endpoints some Organization accounted for, imported or not.
        self.claimed: set[str] = set()
        #: Bases reached through each brand, for affiliates that borrow their parent's access.
        self.brand_bases: dict[str, list[str]] = {}
        self.affiliates: list[tuple[_Brand, _Entry]] = []
        #: Endpoints already reported as repeating an imported base.
        self.reported_duplicates: set[str] = set()
        #: Organizations some Endpoint names as its managingOrganization (ballot-era links).
        self.managing: set[str] = set()
        for item in _unique(index.endpoints.values()):
            parent = index.resolve(item.resource.get("managingOrganization"), "Organization")
            if parent is not None:
                self.managing.add(parent.key)

    def visit(self, position: int, raw: Any) -> None:
        """Handle one ``Bundle.entry``."""
        item = self.index.by_position.get(position)
        if item is None:
            resource = _obj(_obj(raw).get("resource"))
            if not resource:
                self.skipped.append(f"Skipped entry {position}: it holds no resource.")
            else:
                kind = _str(resource.get("resourceType")) or "resource without a type"
                self.skipped.append(
                    f"Skipped entry {position}: a {kind} is neither an Organization "
                    "nor an Endpoint."
                )
            return
        if item.resource.get("resourceType") == "Organization":
            self._visit_organization(item)
        else:
            self._visit_endpoint(item)

    def _visit_organization(self, org: _Entry) -> None:
        brand = _brand(org)
        shown = brand.name or org.label
        references = _endpoint_references(org.resource)
        if org.resource.get("active") is False:
            for ref in references:
                endpoint = self.index.resolve(ref, "Endpoint")
                if endpoint is not None:
                    self.claimed.add(endpoint.key)
            self.skipped.append(f"Skipped brand '{shown}': it is marked inactive.")
            return
        if not references:
            if org.key in self.managing:
                return  # its Endpoints name it; they are taken when visited
            parent = self.index.resolve(org.resource.get("partOf"), "Organization")
            if parent is not None:
                # SMART 2.2: a brand without portal details is served by its partOf brand.
                self.affiliates.append((brand, parent))
            else:
                self.skipped.append(f"Skipped brand '{shown}': it lists no endpoint.")
            return
        for ref in references:
            endpoint = self.index.resolve(ref, "Endpoint")
            if endpoint is None:
                target = _str(_obj(ref).get("reference")) or "an endpoint"
                self.skipped.append(
                    f"Skipped {target} of brand '{shown}': it is not in the bundle."
                )
                continue
            self._take(endpoint, brand)

    def _visit_endpoint(self, endpoint: _Entry) -> None:
        managing = _obj(endpoint.resource.get("managingOrganization"))
        contained = _contained_organizations(endpoint.resource)
        if contained:
            # Oracle's legacy list writes the local reference as {"id": "#O..."}, not
            # {"reference": "#O..."}; accept both, and a lone contained Organization.
            local = _str(managing.get("reference")) or _str(managing.get("id")) or ""
            org = contained.get(local.removeprefix("#"))
            if org is None and len(contained) == 1:
                org = next(iter(contained.values()))
            if org is not None:
                self._take(endpoint, _brand(_Entry(f"{endpoint.key}#{org.get('id')}", org)))
                return
        parent = self.index.resolve(managing, "Organization")
        if parent is not None and endpoint.key not in {
            e.key
            for ref in _endpoint_references(parent.resource)
            if (e := self.index.resolve(ref, "Endpoint")) is not None
        }:
            # Ballot-era brands bundles linked Endpoint -> Organization only.
            if parent.resource.get("active") is False:
                self.claimed.add(endpoint.key)
                return
            self._take(endpoint, _brand(parent))

    def _take(self, endpoint: _Entry, brand: _Brand) -> None:
        """Import ``endpoint`` under ``brand``, or fold the brand into an earlier import."""
        self.claimed.add(endpoint.key)
        shown = brand.name or endpoint.label
        if endpoint.key not in self.checked:
            base, reason = _check_endpoint(endpoint.resource, allow_loopback=self.allow_loopback)
            self.checked[endpoint.key] = base
            if reason is not None:
                self.skipped.append(f"Skipped {endpoint.label} ({shown}): {reason}.")
        base = self.checked[endpoint.key]
        if base is None:
            return
        bases = self.brand_bases.setdefault(brand.key, [])
        if base not in bases:
            bases.append(base)
        names = (brand.name, *brand.aliases) if brand.name else brand.aliases
        existing = self.by_base.get(base)
        if existing is not None:
            duplicate = existing.endpoint_key != endpoint.key
            if duplicate and endpoint.key not in self.reported_duplicates:
                self.reported_duplicates.add(endpoint.key)
                self.skipped.append(
                    f"Skipped {endpoint.label} ({shown}): its FHIR base {base} duplicates "
                    f"{existing.endpoint_key}, imported as '{existing.display_name}'."
                )
            existing.add_aliases(names)
            return
        pending = _Pending(
            endpoint_key=endpoint.key,
            display_name=brand.name or _str(endpoint.resource.get("name")) or (_host(base) or base),
            fhir_base=base,
            vendor=self._vendor(base),
            source_id=_str(endpoint.resource.get("id")),
            portal_url=self._portal_url(brand, endpoint),
        )
        pending.add_aliases(names)
        self.by_base[base] = pending

    def _vendor(self, base: str) -> Vendor:
        if self.format != "brands":
            return "cerner"
        host = _host(base)
        if host is not None and _on_domain(host, _CERNER_DOMAINS):
            return "cerner"
        if host is not None and _on_domain(host, _EPIC_DOMAINS):
            return "epic"
        return "generic"

    def _portal_url(self, brand: _Brand, endpoint: _Entry) -> str | None:
        """The brand's portal for this endpoint, else its first portal, else its parent's."""
        found = _portal_for(brand.organization, endpoint, self.index)
        if found is None:
            parent = self.index.resolve(brand.organization.get("partOf"), "Organization")
            if parent is not None:
                found = _portal_for(parent.resource, endpoint, self.index)
        return found

    def finish(self) -> ImportReport:
        """Apply affiliates, report orphans, and name every endpoint."""
        for child, parent in self.affiliates:
            bases = self.brand_bases.get(parent.key, [])
            shown = child.name or child.key
            if not bases:
                self.skipped.append(
                    f"Skipped brand '{shown}': it lists no endpoint and its parent brand "
                    f"'{_str(parent.resource.get('name')) or parent.label}' provided none."
                )
                continue
            names = (child.name, *child.aliases) if child.name else child.aliases
            for base in bases:
                self.by_base[base].add_aliases(names)
        for endpoint in _unique(self.index.endpoints.values()):
            if endpoint.key not in self.claimed:
                self.skipped.append(
                    f"Skipped {endpoint.label}: no brand or organization in the bundle names it."
                )
        taken: set[str] = set()
        imported = []
        for pending in self.by_base.values():
            name = _operator_name(pending.display_name, pending.fhir_base, taken)
            taken.add(name)
            imported.append(
                ImportedEndpoint(
                    name=name,
                    display_name=pending.display_name,
                    fhir_base=pending.fhir_base,
                    vendor=pending.vendor,
                    source_id=pending.source_id,
                    portal_url=pending.portal_url,
                    aliases=tuple(pending.aliases),
                )
            )
        return ImportReport(tuple(imported), tuple(self.skipped), self.format)


# --- resource helpers -----------------------------------------------------------------------


def _check_endpoint(
    endpoint: dict[str, Any], *, allow_loopback: bool
) -> tuple[str | None, str | None]:
    """``(fhir_base, None)`` for a usable R4 REST endpoint, else ``(None, reason)``."""
    status = endpoint.get("status")
    if status is not None and status != "active":
        return None, f"its status is '{status}', not 'active'"
    codes = _connection_codes(endpoint.get("connectionType"))
    if codes and _FHIR_REST not in codes:
        return None, f"its connection type is '{codes[0]}', not FHIR REST ({_FHIR_REST})"
    versions = _fhir_versions(endpoint)
    # The fhir-version extension is how brands bundles mark DSTU2 endpoints (1.0.2) beside R4.
    if versions and not any(v.startswith("4.0.") for v in versions):
        return None, f"it serves FHIR {versions[0]}, not R4 (4.0.x)"
    address = _str(endpoint.get("address"))
    if not address:
        return None, "it has no address"
    try:
        base = normalise_base(address)
    except DiscoveryError as exc:
        return None, f"its address is not a usable FHIR base ({exc.message})"
    parts = urlsplit(base)
    loopback = is_loopback_host(parts.hostname) or (parts.hostname or "").endswith(".localhost")
    if loopback and not allow_loopback:
        return None, f"its address {address} is on this machine (loopback; --allow-loopback)"
    problem = endpoint_problem(base, loopback_tenant=is_loopback_host(parts.hostname))
    if problem is not None:
        return None, f"its address {address} {problem}"
    return base, None


def _connection_codes(value: Any) -> list[str]:
    """Codes of ``Endpoint.connectionType``: a Coding in R4, CodeableConcepts in R5."""
    items = value if isinstance(value, list) else [value]
    codes: list[str] = []
    for item in items:
        concept = _obj(item)
        codings = concept.get("coding")
        for coding in codings if isinstance(codings, list) else [concept]:
            code = _str(_obj(coding).get("code"))
            if code:
                codes.append(code)
    return codes


def _fhir_versions(endpoint: dict[str, Any]) -> list[str]:
    return [
        code
        for ext in _extensions(endpoint)
        if (_str(ext.get("url")) or "").endswith("/endpoint-fhir-version")
        and (code := _str(ext.get("valueCode")))
    ]


def _brand(org: _Entry) -> _Brand:
    aliases = org.resource.get("alias")
    names = (
        tuple(a.strip() for a in aliases if isinstance(a, str) and a.strip())
        if (isinstance(aliases, list))
        else ()
    )
    name = _str(org.resource.get("name"))
    return _Brand(org.key, org.resource, name.strip() if name else None, names)


def _endpoint_references(org: dict[str, Any]) -> list[Any]:
    """``Organization.endpoint`` plus any portal endpoint missing from it, in order."""
    refs = list(org.get("endpoint") or []) if isinstance(org.get("endpoint"), list) else []
    seen = {_str(_obj(r).get("reference")) for r in refs}
    for portal in _portals(org):
        for ref in portal.endpoints:
            if ref not in seen:
                seen.add(ref)
                refs.append({"reference": ref})
    return refs


@dataclass(frozen=True)
class _Portal:
    url: str | None
    endpoints: tuple[str, ...]


def _portals(org: dict[str, Any]) -> list[_Portal]:
    portals = []
    for ext in _extensions(org):
        url = _str(ext.get("url")) or ""
        if url.endswith("/organization-portal"):
            link = None
            endpoints = []
            for part in _extensions(ext):
                if part.get("url") == "portalUrl":
                    # SMART's own example carries portal strings as valueUrl, so accept either.
                    link = _str(part.get("valueUrl")) or _str(part.get("valueString")) or link
                elif part.get("url") == "portalEndpoint":
                    target = _str(_obj(part.get("valueReference")).get("reference"))
                    if target:
                        endpoints.append(target)
            portals.append(_Portal(_web_url(link), tuple(endpoints)))
        elif url.endswith(_LEGACY_PORTAL_URL_SUFFIXES):
            portals.append(_Portal(_web_url(_str(ext.get("valueUrl"))), ()))
    return portals


def _portal_for(org: dict[str, Any], endpoint: _Entry, index: _Index) -> str | None:
    first = None
    for portal in _portals(org):
        if portal.url is None:
            continue
        first = first or portal.url
        for ref in portal.endpoints:
            target = index.resolve({"reference": ref}, "Endpoint")
            if target is not None and target.key == endpoint.key:
                return portal.url
    return first


def _has_brand_details(org: dict[str, Any]) -> bool:
    return any(
        (_str(ext.get("url")) or "").endswith(_BRAND_DETAIL_SUFFIXES) for ext in _extensions(org)
    )


def _contained_organizations(endpoint: dict[str, Any]) -> dict[str, dict[str, Any]]:
    contained = endpoint.get("contained")
    found: dict[str, dict[str, Any]] = {}
    for item in contained if isinstance(contained, list) else []:
        resource = _obj(item)
        if resource.get("resourceType") == "Organization":
            found[_str(resource.get("id")) or ""] = resource
    return found


def _extensions(element: dict[str, Any]) -> list[dict[str, Any]]:
    extensions = element.get("extension")
    if not isinstance(extensions, list):
        return []
    return [ext for ext in extensions if isinstance(ext, dict)]


# --- names --------------------------------------------------------------------------------


def _operator_name(display_name: str, fhir_base: str, taken: set[str]) -> str:
    """A lower-case slug of the display name, made unique with a digest of the FHIR base.

    The digest (not a counter) keeps a name stable when entries are added or reordered, so a
    re-import updates the same tenant.
    """
    slug = _slug(display_name)[:MAX_NAME_LENGTH].rstrip("-")
    if slug and slug not in taken:
        return slug
    digest = hashlib.sha256(fhir_base.encode()).hexdigest()
    stem = slug[: MAX_NAME_LENGTH - 9].rstrip("-") or "endpoint"
    for width in range(8, len(digest) + 1):
        candidate = f"{stem[: MAX_NAME_LENGTH - width - 1].rstrip('-')}-{digest[:width]}"
        if candidate not in taken:
            return candidate
    raise ConfigError(f"Cannot derive a unique name for {fhir_base}.")  # pragma: no cover


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


# --- small JSON helpers ---------------------------------------------------------------------


def _obj(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (absent and malformed read alike)."""
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _unique(entries: Any) -> list[_Entry]:
    """Each indexed resource once (the index holds it under fullUrl and ``Type/id``)."""
    seen: dict[str, _Entry] = {}
    for entry in entries:
        seen.setdefault(entry.key, entry)
    return list(seen.values())


def _host(url: str | None) -> str | None:
    if not url:
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return host.lower() if host else None


def _on_domain(host: str, domains: tuple[str, ...]) -> bool:
    return any(host == d or host.endswith(f".{d}") for d in domains)


def _web_url(url: str | None) -> str | None:
    """``url`` if it is an absolute http(s) link a patient could open, else None."""
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    return url.strip() if parts.scheme in ("http", "https") and parts.netloc else None


def _too_large(path: Path) -> str:
    limit = MAX_FILE_BYTES // (1024 * 1024)
    return f"Endpoint file {path} is larger than {limit} MB; refusing to read it."
