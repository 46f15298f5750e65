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
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson

from syncsvc.db.columns import URL_LENGTH
from syncsvc.directory.bundle_index import (
    CERNER_DOMAINS,
    EPIC_DOMAINS,
    FHIR_REST,
    MAX_ALIASES,
    NAME_LENGTH,
    Address,
    Brand,
    Entry,
    Format,
    Index,
    brand_of,
    connection_codes,
    contained_organizations,
    detect_format,
    endpoint_references,
    fhir_versions,
    host_of,
    logo_urls_of,
    object_of,
    on_domain,
    portal_for,
    portal_name_for,
    quoted,
    short_text,
    text_of,
    unique_entries,
)
from syncsvc.errors import ConfigError, DiscoveryError
from syncsvc.netguard import endpoint_problem, is_loopback_host
from syncsvc.smart.discovery import normalise_base

#: Larger files are refused before parsing: the whole document is held in memory.
MAX_FILE_BYTES = 50 * 1024 * 1024
#: JSON values (counted by their separators before parsing) a file may hold: parsed, each is a
#: Python object, so 50 MB of ``{},`` would take gigabytes. A published directory of 50 MB holds
#: about a million (Oracle Health's 1,359 organisations: 38,000 in 1.1 MB).
MAX_JSON_VALUES = 3_000_000
#: Entries a bundle may hold: each may become a tenant.
MAX_ENTRIES = 200_000
#: Tenant names are at most this long (``TenantSpec`` enforces the same bound).
MAX_NAME_LENGTH = 63

Vendor = Literal["cerner", "epic", "generic"]


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
    address: Address | None = None
    #: The brand this organisation belongs to (its ``partOf``), when the directory says.
    brand_name: str | None = None
    portal_name: str | None = None
    #: Where the brand's logo may be fetched (its own, else its parent brand's), best first.
    logo_urls: tuple[str, ...] = ()


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
    # Every value but a container's last is followed by a comma; containers open with { or [.
    values = data.count(b",") + data.count(b"{") + data.count(b"[")
    if values > MAX_JSON_VALUES:
        raise ConfigError(
            f"Endpoint file {path} holds more than {MAX_JSON_VALUES:,} JSON values; "
            "refusing to parse it."
        )
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
    if len(entries) > MAX_ENTRIES:
        raise ConfigError(
            f"The Bundle holds {len(entries):,} entries, more than the {MAX_ENTRIES:,} an "
            "import takes; refusing it."
        )
    index = Index(entries)
    if not index.endpoints:
        raise ConfigError(
            "The Bundle holds no Endpoint resources; expected a SMART User-access Brands "
            "bundle or an Oracle Health endpoint bundle."
        )
    importer = _Importer(index, detect_format(index), allow_loopback=allow_loopback)
    for position, entry in enumerate(entries, start=1):
        importer.visit(position, entry)
    return importer.finish()


# --- reading the bundle -------------------------------------------------------------------


# --- building the result ------------------------------------------------------------------


@dataclass
class _Pending:
    """An endpoint being assembled; it becomes an ImportedEndpoint once named."""

    endpoint_key: str
    display_name: str
    fhir_base: str
    vendor: Vendor
    source_id: str | None
    portal_url: str | None
    address: Address | None = None
    brand_name: str | None = None
    portal_name: str | None = None
    logo_urls: tuple[str, ...] = ()
    aliases: list[str] = field(default_factory=list)

    def add_aliases(self, names: tuple[str, ...]) -> None:
        for name in names:
            if len(self.aliases) >= MAX_ALIASES:
                return
            if name != self.display_name and name not in self.aliases:
                self.aliases.append(name)


class _Importer:
    """Walks the entries in bundle order and keeps one endpoint per FHIR base."""

    def __init__(self, index: Index, fmt: Format, *, allow_loopback: bool) -> None:
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
        self.affiliates: list[tuple[Brand, Entry]] = []
        #: Endpoints already reported as repeating an imported base.
        self.reported_duplicates: set[str] = set()
        #: Organizations some Endpoint names as its managingOrganization (ballot-era links).
        self.managing: set[str] = set()
        for item in unique_entries(index.endpoints.values()):
            parent = index.resolve(item.resource.get("managingOrganization"), "Organization")
            if parent is not None:
                self.managing.add(parent.key)

    def visit(self, position: int, raw: Any) -> None:
        """Handle one ``Bundle.entry``."""
        item = self.index.by_position.get(position)
        if item is None:
            resource = object_of(object_of(raw).get("resource"))
            if not resource:
                self.skipped.append(f"Skipped entry {position}: it holds no resource.")
            else:
                kind = quoted(text_of(resource.get("resourceType")) or "resource without a type")
                self.skipped.append(
                    f"Skipped entry {position}: a {kind} is neither an Organization "
                    "nor an Endpoint."
                )
            return
        if item.resource.get("resourceType") == "Organization":
            self._visit_organization(item)
        else:
            self._visit_endpoint(item)

    def _visit_organization(self, org: Entry) -> None:
        brand = brand_of(org)
        shown = brand.name or org.label
        references = endpoint_references(org.resource)
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
                target = text_of(object_of(ref).get("reference")) or "an endpoint"
                self.skipped.append(
                    f"Skipped {quoted(target)} of brand '{shown}': it is not in the bundle."
                )
                continue
            self._take(endpoint, brand)

    def _visit_endpoint(self, endpoint: Entry) -> None:
        managing = object_of(endpoint.resource.get("managingOrganization"))
        contained = contained_organizations(endpoint.resource)
        if contained:
            # Oracle's legacy list writes the local reference as {"id": "#O..."}, not
            # {"reference": "#O..."}; accept both, and a lone contained Organization.
            local = text_of(managing.get("reference")) or text_of(managing.get("id")) or ""
            org = contained.get(local.removeprefix("#"))
            if org is None and len(contained) == 1:
                org = next(iter(contained.values()))
            if org is not None:
                self._take(endpoint, brand_of(Entry(f"{endpoint.key}#{org.get('id')}", org)))
                return
        parent = self.index.resolve(managing, "Organization")
        if parent is not None and endpoint.key not in {
            e.key
            for ref in endpoint_references(parent.resource)
            if (e := self.index.resolve(ref, "Endpoint")) is not None
        }:
            # Ballot-era brands bundles linked Endpoint -> Organization only.
            if parent.resource.get("active") is False:
                self.claimed.add(endpoint.key)
                return
            self._take(endpoint, brand_of(parent))

    def _take(self, endpoint: Entry, brand: Brand) -> None:
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
            existing.address = existing.address or brand.address
            return
        parent = self.index.resolve(brand.organization.get("partOf"), "Organization")
        pending = _Pending(
            endpoint_key=endpoint.key,
            display_name=brand.name
            or short_text(endpoint.resource.get("name"))
            or (host_of(base) or base)[:NAME_LENGTH],
            fhir_base=base,
            vendor=self._vendor(base),
            source_id=text_of(endpoint.resource.get("id")),
            portal_url=self._portal_url(brand, endpoint),
            address=brand.address,
            brand_name=short_text(parent.resource.get("name")) if parent is not None else None,
            # A brand with several portals: the one that serves this endpoint names it.
            portal_name=portal_name_for(brand.organization, endpoint, self.index)
            or (
                portal_name_for(parent.resource, endpoint, self.index)
                if parent is not None
                else None
            ),
            logo_urls=logo_urls_of(brand.organization)
            or (logo_urls_of(parent.resource) if parent is not None else ()),
        )
        pending.add_aliases(names)
        self.by_base[base] = pending

    def _vendor(self, base: str) -> Vendor:
        if self.format != "brands":
            return "cerner"
        host = host_of(base)
        if host is not None and on_domain(host, CERNER_DOMAINS):
            return "cerner"
        if host is not None and on_domain(host, EPIC_DOMAINS):
            return "epic"
        return "generic"

    def _portal_url(self, brand: Brand, endpoint: Entry) -> str | None:
        """The brand's portal for this endpoint, else its first portal, else its parent's."""
        found = portal_for(brand.organization, endpoint, self.index)
        if found is None:
            parent = self.index.resolve(brand.organization.get("partOf"), "Organization")
            if parent is not None:
                found = portal_for(parent.resource, endpoint, self.index)
        return found

    def finish(self) -> ImportReport:
        """Apply affiliates, report orphans, and name every endpoint."""
        for child, parent in self.affiliates:
            bases = self.brand_bases.get(parent.key, [])
            shown = child.name or child.key
            if not bases:
                self.skipped.append(
                    f"Skipped brand '{shown}': it lists no endpoint and its parent brand "
                    f"'{short_text(parent.resource.get('name')) or parent.label}' provided none."
                )
                continue
            names = (child.name, *child.aliases) if child.name else child.aliases
            for base in bases:
                self.by_base[base].add_aliases(names)
        for endpoint in unique_entries(self.index.endpoints.values()):
            if endpoint.key not in self.claimed:
                self.skipped.append(
                    f"Skipped {endpoint.label}: no brand or organization in the bundle names it."
                )
        imported = []
        for pending in self.by_base.values():
            imported.append(
                ImportedEndpoint(
                    name="",
                    display_name=pending.display_name,
                    fhir_base=pending.fhir_base,
                    vendor=pending.vendor,
                    source_id=pending.source_id,
                    portal_url=pending.portal_url,
                    aliases=tuple(pending.aliases),
                    address=pending.address,
                    brand_name=pending.brand_name,
                    portal_name=pending.portal_name,
                    logo_urls=pending.logo_urls,
                )
            )
        return named(ImportReport(tuple(imported), tuple(self.skipped), self.format), {})


# --- resource helpers -----------------------------------------------------------------------


def _check_endpoint(
    endpoint: dict[str, Any], *, allow_loopback: bool
) -> tuple[str | None, str | None]:
    """``(fhir_base, None)`` for a usable R4 REST endpoint, else ``(None, reason)``."""
    status = endpoint.get("status")
    if status is not None and status != "active":
        return None, f"its status is '{quoted(str(status))}', not 'active'"
    codes = connection_codes(endpoint.get("connectionType"))
    if codes and FHIR_REST not in codes:
        return None, f"its connection type is '{quoted(codes[0])}', not FHIR REST ({FHIR_REST})"
    versions = fhir_versions(endpoint)
    # The fhir-version extension is how brands bundles mark DSTU2 endpoints (1.0.2) beside R4.
    if versions and not any(v.startswith("4.0.") for v in versions):
        return None, f"it serves FHIR {quoted(versions[0])}, not R4 (4.0.x)"
    found = text_of(endpoint.get("address"))
    if not found:
        return None, "it has no address"
    address = quoted(found)
    if len(found) > URL_LENGTH:
        return None, f"its address {address} is longer than {URL_LENGTH:,} characters"
    try:
        base = normalise_base(found)
    except DiscoveryError as exc:
        return None, f"its address is not a usable FHIR base ({quoted(exc.message)})"
    parts = urlsplit(base)
    loopback = is_loopback_host(parts.hostname) or (parts.hostname or "").endswith(".localhost")
    if loopback and not allow_loopback:
        return None, f"its address {address} is on this machine (loopback; --allow-loopback)"
    problem = endpoint_problem(base, loopback_tenant=is_loopback_host(parts.hostname))
    if problem is not None:
        return None, f"its address {address} {problem}"
    return base, None


# --- names --------------------------------------------------------------------------------


def named(report: ImportReport, known: Mapping[str, str]) -> ImportReport:
    """``report`` with every endpoint named, keeping the names of tenants already registered.

    ``known`` maps the FHIR base of each registered tenant to its name. A base registered
    before keeps its tenant's name even when the directory renamed the organisation (the name is
    in its callback URI and its links; the display name follows the directory), and a new
    endpoint never takes a name another base holds, so an import never repoints a tenant.
    """
    taken = set(known.values())
    endpoints = []
    for endpoint in report.endpoints:
        name = known.get(endpoint.fhir_base) or _operator_name(
            endpoint.display_name, endpoint.fhir_base, taken
        )
        taken.add(name)
        endpoints.append(replace(endpoint, name=name))
    return replace(report, endpoints=tuple(endpoints))


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


def _too_large(path: Path) -> str:
    limit = MAX_FILE_BYTES // (1024 * 1024)
    return f"Endpoint file {path} is larger than {limit} MB; refusing to read it."
