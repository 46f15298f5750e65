"""How the sandbox reads SMART scopes: v1 (``patient/Observation.read``) and v2 (``.rs``) syntax.

The resource server uses :func:`covers` to decide whether a token may search or read a type at all,
and :func:`search_within` / :func:`resource_within` whether a search or a resource stays inside
the categories a qualified v2 scope (``patient/Observation.rs?category=<system>|<code>``) grants.
Of the query qualifiers only ``category`` is understood; a scope qualified by anything else grants
nothing here. This is the sandbox's own, deliberately independent reading of the spec; syncsvc
has its own planner.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

Operation = Literal["read", "search"]

_RESOURCE_SCOPE = re.compile(
    r"^(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]+)\.(?P<perm>read|write|\*|[cruds]+)"
    r"(?:\?(?P<query>.+))?$"
)
CATEGORY = "category"


@dataclass(frozen=True)
class ResourceScope:
    """A parsed resource scope."""

    context: str
    resource_type: str
    permissions: str
    version: Literal[1, 2]
    raw: str
    #: The categories a ``?category=`` qualifier grants (None: the whole type).
    categories: frozenset[str] | None = None
    #: Qualified by a parameter the sandbox does not understand: grants nothing.
    opaque: bool = False

    @property
    def is_wildcard(self) -> bool:
        """Whether the scope names every type (``*``)."""
        return self.resource_type == "*"


def parse(scope: str) -> ResourceScope | None:
    """The resource scope ``scope`` denotes, or ``None`` for launch/openid/other scopes."""
    match = _RESOURCE_SCOPE.match(scope)
    if match is None:
        return None
    perm = match["perm"]
    version: Literal[1, 2] = 1 if perm in ("read", "write", "*") else 2
    if version == 2 and not _is_ordered_subset(perm):
        return None
    query = match["query"]
    if query is None:
        return ResourceScope(match["context"], match["type"], perm, version, scope)
    if version == 1:
        return None
    categories: set[str] = set()
    opaque = False
    for item in query.split("&"):
        name, _, value = item.partition("=")
        if name == CATEGORY and value:
            categories.update(t for t in unquote(value).split(",") if t)
        else:
            opaque = True
    return ResourceScope(
        match["context"], match["type"], perm, version, scope, frozenset(categories), opaque
    )


def _is_ordered_subset(perm: str) -> bool:
    # SMART v2 requires the permission letters in c, r, u, d, s order without repeats.
    order = "cruds"
    position = -1
    for letter in perm:
        index = order.find(letter)
        if index <= position:
            return False
        position = index
    return True


def allows(scope: ResourceScope, operation: Operation) -> bool:
    """Whether one parsed scope permits ``operation``."""
    if scope.version == 1:
        return scope.permissions in ("read", "*")
    return ("r" if operation == "read" else "s") in scope.permissions


def _applicable(scopes: list[str], resource_type: str, operation: Operation) -> list[ResourceScope]:
    found = []
    for raw in scopes:
        scope = parse(raw)
        if scope is None or scope.context not in ("patient", "user") or scope.opaque:
            continue
        if scope.resource_type in ("*", resource_type) and allows(scope, operation):
            found.append(scope)
    return found


def covers(scopes: list[str], resource_type: str, operation: Operation = "search") -> bool:
    """Whether any of ``scopes`` lets a patient-context token ``operation`` on ``resource_type``
    (some categories of it at least)."""
    return bool(_applicable(scopes, resource_type, operation))


def granted_categories(
    scopes: list[str], resource_type: str, operation: Operation
) -> frozenset[str] | None:
    """The categories of ``resource_type`` the scopes grant, None for the whole type."""
    found: set[str] = set()
    for scope in _applicable(scopes, resource_type, operation):
        if scope.categories is None:
            return None
        found |= scope.categories
    return frozenset(found)


def _token_granted(token: str, granted: frozenset[str]) -> bool:
    # A bare code searched would also find that code of other systems: only a granted bare code
    # admits it. A ``system|code`` is admitted by itself or by its bare code.
    return token in granted or ("|" in token and token.rpartition("|")[2] in granted)


def search_within(
    scopes: list[str], resource_type: str, category_filter: tuple[frozenset[str], ...]
) -> bool:
    """Whether a search with ``category_filter`` (each set one ``category`` parameter, its
    tokens or'ed) can only find resources the scopes grant."""
    granted = granted_categories(scopes, resource_type, "search")
    if granted is None:
        return True
    return any(
        values and all(_token_granted(token, granted) for token in values)
        for values in category_filter
    )


def resource_within(scopes: list[str], resource_type: str, tokens: frozenset[str]) -> bool:
    """Whether a resource with these category tokens (``code`` and ``system|code``) is granted."""
    granted = granted_categories(scopes, resource_type, "read")
    return granted is None or bool(granted & tokens)
