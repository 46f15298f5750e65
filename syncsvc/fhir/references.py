"""References in stored resources to the shared resources a record names, and where they point.

A patient's resources name clinicians, places, organisations and medications (``performer``,
``location``, ``serviceProvider``, ``medicationReference`` ...). Those five types are read by id
under the connection's own FHIR base, and only there: a reference is followed when it is relative
(``Practitioner/123``) or absolute under the exact base. Everything else is recorded as outside
the base, by kind, and never followed with the token: another server or another tenant's path
(``other_server``), a contained resource (``#med1``: it is already in the resource), a
``urn:uuid:`` or ``urn:oid:`` (``urn``), a reference by business identifier only
(``identifier``), or one that cannot be read as any of these (``malformed``).

References are found in the canonical bytes syncsvc stores, without parsing the JSON: in JSON a
string never holds an unescaped quote, so ``"reference":"`` can only start a Reference's
``reference``. Parsing is left to the few bodies that hold an identifier-only reference.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from syncsvc.fhir.ids import is_fhir_id
from syncsvc.fhir.urls import is_under_base

#: The shared types a record references that syncsvc reads, in the order it reads them.
REFERENCED_TYPES: tuple[str, ...] = (
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "Medication",
)
_REFERENCED = frozenset(REFERENCED_TYPES)

OutsideKind = Literal["other_server", "contained", "urn", "identifier", "malformed"]
#: Every kind of reference that is recorded and not followed.
OUTSIDE_KINDS: tuple[OutsideKind, ...] = (
    "other_server",
    "contained",
    "urn",
    "identifier",
    "malformed",
)

#: The longest reference value looked at: a real one is well under 300 characters.
MAX_REFERENCE_LENGTH = 2048

_REFERENCE = re.compile(rb'"reference":"((?:[^"\\]|\\.){0,2048})"')
_IDENTIFIER_ONLY_HINT = b'"identifier":{'
_HISTORY = re.compile(r"/_history/[^/]+$")


@dataclass(frozen=True, slots=True)
class Target:
    """A shared resource under the base: read as ``{base}/{resource_type}/{resource_id}``."""

    resource_type: str
    resource_id: str

    @property
    def key(self) -> str:
        """The reference's key in the connection's record of references."""
        return f"{self.resource_type}/{self.resource_id}"


@dataclass(frozen=True, slots=True)
class Outside:
    """A reference that is recorded and never followed (see the module's kinds)."""

    kind: OutsideKind
    #: The type named, where the reference says (a contained or urn reference does not).
    resource_type: str | None
    #: A digest of the reference: it tells references apart without keeping a foreign URL.
    digest: str

    @property
    def key(self) -> str:
        """The reference's key in the connection's record of references."""
        return f"{self.kind}:{self.digest}"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def classify(reference: str, base: str) -> Target | Outside | None:
    """Where ``reference`` points, seen from ``base``; ``None`` when it is not one of the five
    shared types (a Patient, an Encounter ... are synced as the record itself)."""
    value = reference.strip()
    if value.startswith("#"):
        return Outside("contained", None, _digest(value))
    if value.lower().startswith("urn:"):
        return Outside("urn", None, _digest(value))
    path = _HISTORY.sub("", value.split("?", 1)[0].split("#", 1)[0]).rstrip("/")
    parts = path.split("/")
    resource_type = parts[-2] if len(parts) >= 2 else None
    resource_id = parts[-1]
    if "://" in value:
        named = resource_type if resource_type in _REFERENCED else None
        if named is None:
            # An absolute reference to another type: only the shared types' are counted (a
            # foreign Patient reference is the compartment guard's business).
            return None
        expected = f"{base.rstrip('/')}/{named}/{resource_id}"
        if path == expected and is_under_base(path, base) and is_fhir_id(resource_id):
            return Target(named, resource_id)
        return Outside("other_server", named, _digest(value))
    if len(parts) != 2 or resource_type not in _REFERENCED:
        # A relative reference that starts or ends like a shared type's but is not
        # ``Type/id`` is recorded, never read.
        named = next((p for p in (parts[0], resource_type) if p in _REFERENCED), None)
        return Outside("malformed", named, _digest(value)) if named is not None else None
    if not is_fhir_id(resource_id):
        return Outside("malformed", resource_type, _digest(value))
    return Target(resource_type, resource_id)


def _unescape(raw: bytes) -> str | None:
    if b"\\" not in raw:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        decoded = orjson.loads(b'"' + raw + b'"')
    except orjson.JSONDecodeError:
        return None
    return decoded if isinstance(decoded, str) else None


def references_in(body: bytes, base: str) -> Iterator[Target | Outside]:
    """The references of one stored resource (canonical JSON) to the shared types, and the
    outside references, in the order they appear."""
    for match in _REFERENCE.finditer(body):
        value = _unescape(match.group(1))
        if value is None or len(value) > MAX_REFERENCE_LENGTH:
            yield Outside("malformed", None, _digest(repr(match.group(1)[:256])))
            continue
        found = classify(value, base)
        if found is not None:
            yield found
    if _IDENTIFIER_ONLY_HINT in body:
        yield from _identifier_only(body)


def _identifier_only(body: bytes) -> Iterator[Outside]:
    """References that name their target by business identifier only (no ``reference``)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    stack: list[Any] = [document]
    # Bounded by the body: each value is visited once.
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            identifier = value.get("identifier")
            if isinstance(identifier, dict) and "reference" not in value:
                named = value.get("type")
                resource_type = named if named in _REFERENCED else None
                yield Outside(
                    "identifier",
                    resource_type,
                    _digest(orjson.dumps(identifier, option=orjson.OPT_SORT_KEYS).decode()),
                )
            stack.extend(v for v in value.values() if isinstance(v, dict | list))
        elif isinstance(value, list):
            stack.extend(v for v in value if isinstance(v, dict | list))
