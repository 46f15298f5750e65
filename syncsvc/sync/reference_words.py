"""The one sentence about a connection's referenced resources, for every surface.

The patient's page, ``syncsvc connections show`` and the host API's connection view all say, in
these words, how many of the clinicians, organisations, places and medications the record names
were fetched, how many the provider does not have, and how many point outside the provider's FHIR
server (and so were never fetched). The counts come from ``resource_references``
(:func:`syncsvc.db.reference_repo.reference_counts`), read by the caller.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

WHAT = "clinicians, organisations, places and medications your record names"


@dataclass(frozen=True)
class ReferenceFacts:
    """What is known about a connection's references (distinct references per state)."""

    #: The shared types the grant lets syncsvc read.
    granted_types: tuple[str, ...] = ()
    states: Mapping[str, int] = field(default_factory=dict)
    outside_kinds: Mapping[str, int] = field(default_factory=dict)
    over_cap: int = 0
    resolved_at: dt.datetime | None = None

    def of(self, state: str) -> int:
        """How many references are in ``state``."""
        return self.states.get(state, 0)

    def to_json(self) -> dict[str, Any]:
        """The API's and the CLI's form (the sentence is added by the caller)."""
        return {
            "granted_types": list(self.granted_types),
            "stored": self.of("stored"),
            "missing": self.of("missing"),
            "outside_base": self.of("outside_base"),
            "outside_kinds": dict(self.outside_kinds),
            "not_granted": self.of("not_granted"),
            "denied": self.of("denied"),
            "waiting": self.of("pending") + self.of("failed"),
            "over_cap": self.over_cap,
            "resolved_at": self.resolved_at,
        }


def _count(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def reference_sentence(facts: ReferenceFacts | None, status: str) -> str | None:
    """What became of the record's references, or ``None`` when there is nothing to say."""
    if facts is None or status == "revoked":
        return None
    stored = facts.of("stored")
    if not facts.granted_types:
        if status != "active" and not stored:
            return None
        return f"This connection's permissions do not include the {WHAT}, so they are not fetched."
    if facts.resolved_at is None:
        return f"The {WHAT} are fetched after the next sync." if status == "active" else None
    clauses = [
        f"{stored:,} of the {WHAT} {'is' if stored == 1 else 'are'} stored"
        if stored
        else f"None of the {WHAT} is stored yet"
    ]
    if missing := facts.of("missing"):
        clauses.append(
            _count(missing, "was not found at your provider", "were not found at your provider")
        )
    if outside := facts.of("outside_base"):
        clauses.append(
            _count(
                outside,
                "points outside your provider's FHIR server and was not fetched",
                "point outside your provider's FHIR server and were not fetched",
            )
        )
    if not_granted := facts.of("not_granted"):
        clauses.append(
            _count(not_granted, "is of a kind", "are of kinds") + " this connection may not read"
        )
    if denied := facts.of("denied"):
        clauses.append(_count(denied, "was refused", "were refused") + " by your provider")
    if waiting := facts.of("pending") + facts.of("failed"):
        clauses.append(_count(waiting, "is", "are") + " fetched at a later sync")
    if facts.over_cap:
        clauses.append(f"{facts.over_cap:,} more were not recorded (this connection's limit)")
    return "; ".join(clauses) + "."
