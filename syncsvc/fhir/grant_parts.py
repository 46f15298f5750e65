"""Searching a type only within the parts of it a grant gave, and telling a resource's part.

A granular grant (``patient/Observation.rs?category=<system>|laboratory``) lets syncsvc search the
type only with the qualifier's parameters. The vendor's plan may need parameters of its own
(Epic refuses an Observation search without a category from its list): each granted part is
combined with each of the plan's variants, and where both name a parameter only the tokens both
allow are kept. A part no variant admits cannot be searched at this vendor and is reported, never
widened. Whatever is searched stays inside one granted part.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from syncsvc.fhir.plans import TypePlan
from syncsvc.smart.scope_grammar import Part, TypeGrant, token_matches

#: Parameters the plan itself sets for every search; a part may not replace them.
_RESERVED = frozenset({"patient", "subject", "_count", "_lastUpdated"})


@dataclass(frozen=True)
class GrantedPlan:
    """A type's plan narrowed to its grant: the searches, and which parts they cover."""

    plan: TypePlan
    #: The parts searched (None: the whole type, as the plan searches it).
    searched: tuple[Part, ...] | None
    #: Granted parts no search of this vendor can stay within (not searched).
    unsearchable: tuple[Part, ...] = ()


def _tokens(value: str) -> list[str]:
    return [token for token in value.split(",") if token]


def _narrower(a: str, b: str) -> str:
    # Of two matching tokens, the one naming its system says more.
    return a if "|" in a else b


def _combine(variant: Mapping[str, str], part: Part) -> dict[str, str] | None:
    """One search within both the vendor's variant and the granted part, or None."""
    names = [name for name, _ in part]
    if len(set(names)) != len(names) or _RESERVED & set(names):
        return None  # repeated (FHIR's "and") or plan-owned parameters: not searchable as given
    search = dict(variant)
    for name, value in part:
        if name not in search:
            search[name] = value
            continue
        kept = [
            _narrower(mine, theirs)
            for mine in _tokens(value)
            for theirs in _tokens(search[name])
            if token_matches(mine, theirs)
        ]
        if not kept:
            return None
        search[name] = ",".join(dict.fromkeys(kept))
    return search


def within_grant(plan: TypePlan, grant: TypeGrant) -> GrantedPlan:
    """``plan`` with only the searches ``grant`` allows."""
    if grant.parts is None:
        return GrantedPlan(plan, None)
    variants: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
    searched: list[Part] = []
    unsearchable: list[Part] = []
    for part in grant.parts:
        combined = [c for v in plan.variants if (c := _combine(v, part)) is not None]
        if not combined:
            unsearchable.append(part)
            continue
        searched.append(part)
        for search in combined:
            variants.setdefault(tuple(sorted(search.items())), search)
    narrowed = dataclasses.replace(plan, variants=tuple(variants.values()))
    return GrantedPlan(narrowed, tuple(searched), tuple(unsearchable))


def _codings(value: Any) -> list[dict[str, Any]]:
    concepts = value if isinstance(value, list) else [value]
    found: list[dict[str, Any]] = []
    for concept in concepts:
        if isinstance(concept, dict):
            codings = concept.get("coding")
            if isinstance(codings, list):
                found.extend(c for c in codings if isinstance(c, dict))
    return found


def _resource_tokens(resource: Mapping[str, Any], name: str) -> list[str]:
    tokens: list[str] = []
    for coding in _codings(resource.get(name)):
        code = coding.get("code")
        if isinstance(code, str):
            system = coding.get("system")
            tokens.append(f"{system}|{code}" if isinstance(system, str) else code)
    return tokens


def in_parts(body: bytes, parts: Sequence[Part]) -> bool:
    """Whether a stored resource is one the granted ``parts`` let syncsvc search.

    Only ``category`` (and other CodeableConcept elements named like their parameter) can be
    told from the resource; a part with any other parameter is not judged: False, so nothing
    is flagged on a guess.
    """
    try:
        resource = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(resource, dict):
        return False
    for part in parts:
        if all(
            any(
                token_matches(wanted, held)
                for wanted in _tokens(value)
                for held in _resource_tokens(resource, name)
            )
            for name, value in part
        ):
            return True
    return False
