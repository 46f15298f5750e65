"""How the sandbox reads SMART scopes: v1 (``patient/Observation.read``) and v2 (``.rs``) syntax.

The resource server uses :func:`covers` to decide whether a token may search or read a type. This is
the sandbox's own, deliberately independent reading of the spec; syncsvc has its own planner.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Operation = Literal["read", "search"]

_RESOURCE_SCOPE = re.compile(
    r"^(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]+)\.(?P<perm>read|write|\*|[cruds]+)"
    r"(?:\?.*)?$"
)


@dataclass(frozen=True)
class ResourceScope:
    """A parsed resource scope."""

    context: str
    resource_type: str
    permissions: str
    version: Literal[1, 2]
    raw: str

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
    return ResourceScope(match["context"], match["type"], perm, version, scope)


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


def covers(scopes: list[str], resource_type: str, operation: Operation = "search") -> bool:
    """Whether any of ``scopes`` lets a patient-context token ``operation`` on ``resource_type``."""
    for raw in scopes:
        scope = parse(raw)
        if scope is None or scope.context not in ("patient", "user"):
            continue
        if scope.resource_type in ("*", resource_type) and allows(scope, operation):
            return True
    return False
