"""SMART resource scopes read into a typed model, query qualifiers included.

SMART App Launch 2.x ("Scopes for requesting clinical data"): a resource scope is
``<patient|user|system>/<Type|*>.<permissions>[?param=value&...]``. The permissions are v1's
``read``/``write``/``*`` or an in-order subset of ``cruds``; v1 ``.read`` means v2 ``.rs``,
``.write`` means ``.cud`` and ``.*`` means ``.cruds``. The query suffix narrows the scope to the
resources such a search finds (``patient/Observation.rs?category=<system>|laboratory``). A server
may grant less than was asked, and in another syntax, so everything here reads the *granted*
scopes: which types may be searched, and for each type whether the whole type or only some parts
of it (:class:`TypeGrant`).

Scopes that look like resource scopes but break the grammar (``.dus``, ``?`` with nothing after it,
a parameter without a value) are kept aside as malformed: they grant nothing, and say so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote

Syntax = Literal["v1", "v2"]
Context = Literal["patient", "user", "system"]
#: One search parameter and its value, as a scope's query gives it (value percent-decoded).
Param = tuple[str, str]
#: The parameters of one qualified scope, sorted: the resources a search with all of them finds.
Part = tuple[Param, ...]

_V1_LETTERS = {"read": "rs", "write": "cud", "*": "cruds"}
_ORDER = "cruds"
_SHAPE = re.compile(
    r"^(?P<context>patient|user|system)/(?P<type>[^./?]*)\.(?P<perm>[^?]*)(?:\?(?P<query>.*))?$",
    re.IGNORECASE | re.DOTALL,
)
_TYPE = re.compile(r"^(\*|[A-Za-z][A-Za-z0-9]*)$")
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-.:]*$")
#: A scope this long is not a scope syncsvc will search with (nor show back to anyone).
MAX_SCOPE_LENGTH = 1024


@dataclass(frozen=True)
class ResourceScope:
    """One resource scope: its context, type, permissions and query qualifier."""

    raw: str
    context: str
    #: Canonical spelling where the caller knows the type, ``*`` for a wildcard.
    resource_type: str
    #: As written, lower-cased (``read``, ``rs``, ``cruds``).
    permissions: str
    syntax: Syntax
    #: The v2 letters the permissions amount to (v1 ``read`` is ``rs``).
    letters: frozenset[str]
    #: The qualifier's parameters, sorted; empty for the whole type.
    query: Part = ()

    @property
    def qualified(self) -> bool:
        """Whether a query narrows the scope to part of its type."""
        return bool(self.query)

    @property
    def is_wildcard(self) -> bool:
        """Whether the scope names every type."""
        return self.resource_type == "*"

    def permits(self, letter: str) -> bool:
        """Whether the scope allows one interaction (``r`` read, ``s`` search, ...)."""
        return letter in self.letters

    def permits_reading(self) -> bool:
        """Whether the scope lets syncsvc read or search its type."""
        return "r" in self.letters or "s" in self.letters

    def key(self) -> tuple[str, str, frozenset[str], Part]:
        """What makes two scopes the same grant, however they are spelled."""
        return (self.context, self.resource_type, self.letters, self.query)

    def within(self, other: ResourceScope) -> bool:
        """Whether everything this scope allows, ``other`` allows too."""
        if self.context != other.context:
            return False
        if other.resource_type not in ("*", self.resource_type):
            return False
        if not self.letters <= other.letters:
            return False
        return part_within(self.query, other.query)


def _canonical(raw_type: str, known: Mapping[str, str] | None) -> str:
    if raw_type == "*" or known is None:
        return raw_type
    return known.get(raw_type.lower(), raw_type)


def _letters(perm: str) -> tuple[Syntax, frozenset[str]] | None:
    if perm in _V1_LETTERS:
        return "v1", frozenset(_V1_LETTERS[perm])
    if not perm:
        return None
    position = -1
    for letter in perm:
        index = _ORDER.find(letter)
        if index <= position:  # unknown, repeated or out of order: undefined by the spec
            return None
        position = index
    return "v2", frozenset(perm)


def _query(text: str) -> Part | None:
    params: list[Param] = []
    for item in text.split("&"):
        name, sep, value = item.partition("=")
        name, value = unquote(name), unquote(value)
        if not sep or not value or not _PARAM_NAME.match(name):
            return None
        params.append((name, value))
    return tuple(sorted(set(params)))


def looks_like_resource_scope(scope: str) -> bool:
    """Whether ``scope`` is meant as a resource scope (``patient/``, ``user/``, ``system/``)."""
    head = scope.split("/", 1)[0].lower()
    return "/" in scope and head in ("patient", "user", "system")


def parse(scope: str, known: Mapping[str, str] | None = None) -> ResourceScope | None:
    """The resource scope ``scope`` denotes, or None (not a resource scope, or malformed).

    ``known`` maps lower-cased type names to their canonical spelling.
    """
    text = scope.strip()
    if len(text) > MAX_SCOPE_LENGTH:
        return None
    match = _SHAPE.match(text)
    if match is None or not _TYPE.match(match["type"]):
        return None
    letters = _letters(match["perm"].lower())
    if letters is None:
        return None
    syntax, granted = letters
    query: Part = ()
    if match["query"] is not None:
        if syntax == "v1":
            return None  # SMART 1.0 has no qualifiers: a v1 scope with one is not a scope
        parsed = _query(match["query"])
        if parsed is None:
            return None
        query = parsed
    return ResourceScope(
        raw=text,
        context=match["context"].lower(),
        resource_type=_canonical(match["type"], known),
        permissions=match["perm"].lower(),
        syntax=syntax,
        letters=granted,
        query=query,
    )


# -- tokens: what a category (or any token) parameter names --------------------------------


def token_matches(wanted: str, offered: str) -> bool:
    """Whether token ``wanted`` (``system|code`` or ``code``) names what ``offered`` names.

    A bare code matches that code in any system; two systems must agree.
    """
    w_system, w_bar, w_code = wanted.rpartition("|")
    o_system, o_bar, o_code = offered.rpartition("|")
    if w_code != o_code:
        return False
    return not (w_bar and o_bar) or w_system == o_system


def _tokens(value: str) -> list[str]:
    return [token for token in value.split(",") if token]


def part_within(inner: Part, outer: Part) -> bool:
    """Whether every resource a search with ``inner`` finds, a search with ``outer`` finds.

    Each of ``outer``'s parameters must be in ``inner`` with a value whose tokens are among
    ``outer``'s (a value's commas are FHIR's "or").
    """
    values = dict(inner)
    for name, value in outer:
        if name not in values:
            return False
        allowed = _tokens(value)
        if not all(any(_same_token(t, a) for a in allowed) for t in _tokens(values[name])):
            return False
    return True


def _same_token(inner: str, outer: str) -> bool:
    # A bare code in the inner value could name another system's code: only the outer may be bare.
    i_system, i_bar, i_code = inner.rpartition("|")
    o_system, o_bar, o_code = outer.rpartition("|")
    if i_code != o_code:
        return False
    if not o_bar:
        return True
    return bool(i_bar) and i_system == o_system


def part_text(part: Part) -> str:
    """A part as a query string (``category=<system>|laboratory``), the form stored and shown."""
    return "&".join(f"{name}={value}" for name, value in part)


def part_of_text(text: str) -> Part | None:
    """Inverse of :func:`part_text`; None for text that is not a query."""
    return _query(text) if text else None


# -- a grant: the scopes, read per type ----------------------------------------------------


@dataclass(frozen=True)
class TypeGrant:
    """What a grant lets syncsvc search of one type: all of it, or some parts of it."""

    resource_type: str
    #: None: the whole type. Otherwise the parts granted, each a search's parameters; a resource
    #: is granted when one part finds it (several scopes of one type add up).
    parts: tuple[Part, ...] | None = None

    @property
    def whole(self) -> bool:
        """Whether the whole type is granted."""
        return self.parts is None

    def part_texts(self) -> list[str] | None:
        """The parts as query strings (None: the whole type)."""
        return None if self.parts is None else [part_text(p) for p in self.parts]

    def covers(self, other: TypeGrant) -> bool:
        """Whether this grant includes everything ``other`` grants."""
        if self.parts is None:
            return True
        if other.parts is None:
            return False
        return all(any(part_within(p, mine) for mine in self.parts) for p in other.parts)

    def missing_from(self, other: TypeGrant) -> tuple[Part, ...] | None:
        """The parts of this grant that ``other`` lacks (None: the whole type, when it lacks it).

        ``()`` when ``other`` covers this grant.
        """
        if other.covers(self):
            return ()
        if self.parts is None:
            return None
        assert other.parts is not None  # noqa: S101 - a whole ``other`` covers everything
        return tuple(p for p in self.parts if not any(part_within(p, o) for o in other.parts))


@dataclass(frozen=True)
class Grant:
    """A grant's scopes read: its resource scopes, and what it holds that is not one."""

    scopes: tuple[ResourceScope, ...] = ()
    #: Scopes shaped like resource scopes that break the grammar: they grant nothing.
    malformed: tuple[str, ...] = ()
    #: Launch, identity and refresh scopes (``openid``, ``offline_access`` ...).
    others: tuple[str, ...] = field(default=())

    def type_grant(self, resource_type: str, letter: str = "s") -> TypeGrant | None:
        """What may be done of ``resource_type`` with interaction ``letter``, or None.

        Patient and user scopes count (system scopes are not the patient's to give). An
        unqualified scope grants the whole type, whatever qualified ones say beside it.
        """
        parts: dict[Part, None] = {}
        for scope in self.scopes:
            if scope.context not in ("patient", "user") or not scope.permits(letter):
                continue
            if scope.resource_type not in ("*", resource_type):
                continue
            if not scope.qualified:
                return TypeGrant(resource_type)
            parts.setdefault(scope.query, None)
        if not parts:
            return None
        # A part inside another adds nothing: keep the widest, in the order granted.
        kept = [
            p
            for p in parts
            if not any(o != p and part_within(p, o) and not part_within(o, p) for o in parts)
        ]
        return TypeGrant(resource_type, tuple(kept))


def read_grant(scopes: Iterable[str], known: Mapping[str, str] | None = None) -> Grant:
    """Read a grant's scopes; duplicates (however spelled) count once."""
    parsed: dict[tuple[str, str, frozenset[str], Part], ResourceScope] = {}
    malformed: dict[str, None] = {}
    others: dict[str, None] = {}
    for raw in scopes:
        scope = parse(raw, known)
        if scope is not None:
            parsed.setdefault(scope.key(), scope)
        elif looks_like_resource_scope(raw.strip()):
            malformed.setdefault(raw.strip()[:MAX_SCOPE_LENGTH], None)
        elif raw.strip():
            others.setdefault(raw.strip(), None)
    return Grant(tuple(parsed.values()), tuple(malformed), tuple(others))


def sync_letter(resource_type: str) -> str:
    """The interaction syncing a type needs: the Patient is read by id, the rest searched."""
    return "r" if resource_type == "Patient" else "s"


def type_grants(
    scopes: Iterable[str], candidates: Sequence[str], known: Mapping[str, str] | None = None
) -> dict[str, TypeGrant]:
    """Each of ``candidates`` the grant lets syncsvc sync, with its parts, in candidate order."""
    return grant_types(read_grant(scopes, known), candidates)


def grant_types(grant: Grant, candidates: Sequence[str]) -> dict[str, TypeGrant]:
    """:func:`type_grants` of a grant already read."""
    found: dict[str, TypeGrant] = {}
    for resource_type in candidates:
        type_grant = grant.type_grant(resource_type, sync_letter(resource_type))
        if type_grant is not None:
            found[resource_type] = type_grant
    return found
