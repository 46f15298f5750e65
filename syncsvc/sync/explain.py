"""A connection's state in plain sentences: the one place that words it.

The callback page, the status page, ``syncsvc connections show``, the host API and the webhooks
all call :func:`explain` on the same facts, so they say the same thing in the same words. It is
pure: callers read the facts (:class:`GrantFacts`) and render the :class:`Explanation`.

Two rules hold for every status: no sentence says the record is "kept up to date" unless a
refresh token and at least one readable type exist; and no title says "connected" for a
connection that cannot read anything.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from syncsvc.fhir.references import REFERENCED_TYPES
from syncsvc.smart.scope_grammar import Part, TypeGrant, part_of_text, part_text
from syncsvc.smart.scopes import RESOURCE_DESCRIPTIONS, explain_trimmed, grant_report
from syncsvc.sync.reference_words import ReferenceFacts, reference_sentence
from syncsvc.sync.type_words import shared_words, state_sentence
from syncsvc.vocabulary import (
    NO_READABLE_TYPE,
    OFFLINE_ACCESS_EXPIRED_MESSAGE,
    OFFLINE_ACCESS_NOT_GRANTED,
    RECONNECTABLE_STATUSES,
    SCOPES_WITHDRAWN,
    UNSEARCHABLE,
    UNSUPPORTED,
)

#: The sentence of a healthy grant; nothing else may claim it.
KEPT_UP_TO_DATE = "Your record is being kept up to date in the background."


@dataclass(frozen=True)
class TypeFacts:
    """What is known about one resource type of a connection."""

    state: str | None = None
    last_success_at: dt.datetime | None = None
    #: For ``transient_error`` / ``failing``: when it is tried again, and since when it fails.
    next_attempt_at: dt.datetime | None = None
    failing_since: dt.datetime | None = None
    #: The parts of the type its last completed pull searched (None: the whole type).
    covered_parts: tuple[Part, ...] | None = None
    #: Parts a refresh stopped sharing while the type stayed granted (``*``: the rest of it).
    withdrawn_parts: tuple[str, ...] = ()
    #: Granted parts the tenant's vendor cannot search (all of them when ``unsearchable``).
    unsearchable_parts: tuple[Part, ...] = ()


@dataclass(frozen=True)
class GrantFacts:
    """Everything :func:`explain` looks at; read by the caller, never by this module."""

    status: str
    reason: str | None
    status_message: str | None
    requested_scopes: Sequence[str]
    granted_scopes: Sequence[str]
    has_refresh_token: bool
    access_expires_at: dt.datetime | None
    #: The tenant's types the grant lets syncsvc read, in the tenant's order.
    readable_types: Sequence[str]
    types: Mapping[str, TypeFacts] = field(default_factory=dict)
    #: Live resources kept per type.
    counts: Mapping[str, int] = field(default_factory=dict)
    revocation_pending: bool = False
    #: The record's references to shared resources (None: not read by the caller).
    references: ReferenceFacts | None = None
    #: The readable types granted only in parts (query-qualified scopes), with their parts.
    parts: Mapping[str, tuple[Part, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class TypeLine:
    """One resource type of a connection, in words."""

    type: str
    description: str
    state: str | None
    granted: bool
    resources: int
    last_success_at: dt.datetime | None
    sentence: str
    #: The parts of the type granted, as scope qualifiers (None: all of it, or not granted).
    parts: tuple[str, ...] | None = None
    #: The same in words ("laboratory results only"); None when the whole type was shared.
    shared: str | None = None
    #: Granted parts the provider's system cannot search (not synced), as scope qualifiers.
    unsearchable: tuple[str, ...] = ()

    @property
    def what_shared(self) -> str:
        """The type as "what you shared" lists it, with the parts when only some were."""
        named = f"{self.description} ({self.type})"
        return f"{named}: {self.shared}" if self.shared else named


@dataclass(frozen=True)
class Explanation:
    """A connection's state for a person: a title, a summary, further sentences, per type."""

    status: str
    reason: str | None
    #: Short, for a card or a CLI line ("Connected", "Nothing can be synced").
    title: str
    #: The same as a page's heading ("Your record is connected").
    heading: str
    #: ``ok``, ``warn``, ``bad`` or ``muted`` (the card's colour).
    tone: str
    summary: str
    sentences: tuple[str, ...]
    kept_up_to_date: bool
    can_reconnect: bool
    types: tuple[TypeLine, ...]
    #: What became of the shared resources the record names (:mod:`.reference_words`); the
    #: API and the CLI give it beside their counts, under ``references``.
    references: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The API and webhook form."""
        return {
            "title": self.title,
            "heading": self.heading,
            "summary": self.summary,
            "sentences": list(self.sentences),
            "kept_up_to_date": self.kept_up_to_date,
            "unsupported_types": [line.type for line in self.unsupported],
            "unsearchable_parts": {
                line.type: list(line.unsearchable) for line in self.types if line.unsearchable
            },
        }

    @property
    def unsupported(self) -> tuple[TypeLine, ...]:
        """The types the provider's system does not offer (not a failure: never pulled)."""
        return tuple(line for line in self.types if line.state == UNSUPPORTED)

    @property
    def unsearchable_types(self) -> tuple[TypeLine, ...]:
        """The types shared only in parts the provider's system cannot search (never pulled)."""
        return tuple(line for line in self.types if line.state == UNSEARCHABLE)

    @property
    def withdrawn(self) -> tuple[TypeLine, ...]:
        """The types a narrowed grant took away."""
        return tuple(line for line in self.types if line.state == "withdrawn")


def when(moment: dt.datetime | None) -> str:
    """A moment as every surface prints it."""
    return "an unknown time" if moment is None else f"{moment:%d %b %Y, %H:%M} UTC"


def _describe(resource_type: str) -> str:
    return RESOURCE_DESCRIPTIONS.get(resource_type, resource_type)


def _stopped_sharing(line: TypeLine, facts: TypeFacts) -> str | None:
    """The sentence about parts of a still-granted type a refresh stopped sharing, or None."""
    if not line.granted or not facts.withdrawn_parts:
        return None
    label = f"{line.description.capitalize()} ({line.type})"
    kept = "is kept here but no longer updated"
    if "*" in facts.withdrawn_parts:
        shared = line.shared or "only part of this"
        return f"{label}: your provider now shares {shared}; what was synced of the rest {kept}."
    parts = tuple(p for p in (part_of_text(t) for t in facts.withdrawn_parts) if p is not None)
    words = (shared_words(parts) or "").removesuffix(" only")
    return f"{label}: your provider stopped sharing {words}; what was synced of them {kept}."


def _unsearchable_words(parts: Sequence[Part]) -> str:
    """Parts the provider's system cannot search, in words ("social history")."""
    words = shared_words(parts) if parts else None
    return "the parts shared" if words is None else words.removesuffix(" only")


def _cannot_search(line: TypeLine, facts: TypeFacts) -> str | None:
    """The sentence about granted parts of a type the provider's system cannot search."""
    if not line.granted or not facts.unsearchable_parts:
        return None
    words = _unsearchable_words(facts.unsearchable_parts)
    what = f"your {line.description} ({line.type})"
    if line.state == UNSEARCHABLE:
        return (
            f"Your provider shared only the {words} in {what}, and your provider's system "
            f"cannot search for {words}, so none of it is synced. Nothing failed: it is synced "
            "once that system can search it, or once you share more of it."
        )
    those = "that part is" if len(facts.unsearchable_parts) == 1 else "those parts are"
    return (
        f"Your provider's system cannot search {what} for {words}, so {those} not synced. "
        "Nothing failed: this is a limit of that system."
    )


def _not_yet(facts: TypeFacts, name: str, parts: tuple[Part, ...] | None) -> str:
    """The granted parts the last completed pull did not search, in words (or nothing).

    Parts the provider's system cannot search are not "not synced yet": they are said apart.
    """
    if facts.covered_parts is None or facts.state != "ok":
        return ""
    missing = TypeGrant(name, parts).missing_from(TypeGrant(name, facts.covered_parts))
    if missing is not None:
        missing = tuple(p for p in missing if p not in facts.unsearchable_parts)
    if missing == ():
        return ""
    words = shared_words(missing)
    what = "the rest" if words is None else words.removesuffix(" only")
    return f" Newly shared {what}: not synced yet."


def _type_sentence(
    name: str,
    facts: TypeFacts,
    count: int,
    *,
    readable: bool,
    parts: tuple[Part, ...] | None = None,
) -> str:
    shared = shared_words(parts) if readable else None
    label = f"{_describe(name).capitalize()} ({name})" + (f", {shared}" if shared else "")
    state = facts.state
    if state == "withdrawn":
        since = when(facts.last_success_at) if facts.last_success_at else "they were first synced"
        return (
            f"{label}: your provider stopped sharing this; the {count} record(s) kept here have "
            f"not been updated since {since}."
        )
    if state == UNSUPPORTED:
        if count:
            return (
                f"{label}: your provider's system no longer offers this; the {count} record(s) "
                "kept here are not updated."
            )
        return f"{label}: your provider's system does not offer this, so it is not synced."
    if state == UNSEARCHABLE and readable:
        words = _unsearchable_words(facts.unsearchable_parts)
        if count:
            return (
                f"{label}: your provider's system cannot search for {words}; the {count} "
                "record(s) kept here are not updated."
            )
        return f"{label}: your provider's system cannot search for {words}, so it is not synced."
    if not readable or state == "not_granted":
        return f"{label}: not granted by your provider, so not synced."
    retried = state_sentence(
        name,
        state or "",
        last_success_at=facts.last_success_at,
        failing_since=facts.failing_since,
        next_attempt_at=facts.next_attempt_at,
    )
    if retried is not None:
        return f"{label}: {count} kept. {retried}"
    if state == "ok":
        not_yet = _not_yet(facts, name, parts)
        return f"{label}: {count}, last updated {when(facts.last_success_at)}.{not_yet}"
    if state in ("denied", "error"):
        return f"{label}: {count}; your provider refused it at the last sync."
    if state is None:
        return f"{label}: {count}, not synced yet." if count else f"{label}: not synced yet."
    return f"{label}: {count}; the last sync of this type did not finish."


def _types(facts: GrantFacts) -> tuple[TypeLine, ...]:
    readable = list(facts.readable_types)
    # The shared resources a record names are stored under their own types but said in one
    # sentence of their own (``Explanation.references``), not as types the grant left out.
    shared = set(REFERENCED_TYPES) - set(readable)
    names = dict.fromkeys(
        name for name in [*readable, *facts.types, *facts.counts] if name not in shared
    )
    order = list(RESOURCE_DESCRIPTIONS)
    ranked = sorted(names, key=lambda t: (order.index(t) if t in order else len(order), t))
    lines = []
    for name in ranked:
        type_facts = facts.types.get(name, TypeFacts())
        count = facts.counts.get(name, 0)
        granted = name in readable
        parts = facts.parts.get(name) if granted else None
        lines.append(
            TypeLine(
                type=name,
                description=_describe(name),
                state=type_facts.state,
                granted=granted,
                resources=count,
                last_success_at=type_facts.last_success_at,
                sentence=_type_sentence(name, type_facts, count, readable=granted, parts=parts),
                parts=None if parts is None else tuple(part_text(p) for p in parts),
                shared=shared_words(parts),
                unsearchable=tuple(part_text(p) for p in type_facts.unsearchable_parts)
                if granted
                else (),
            )
        )
    return tuple(lines)


def _offline_summary(facts: GrantFacts) -> str:
    until = (
        f"until {when(facts.access_expires_at)}"
        if facts.access_expires_at is not None
        else "until the access it gave expires"
    )
    return (
        "Your provider did not allow offline access, so your record can be synced only "
        f"{until}; after that it is no longer updated. Reconnect then to sync again."
    )


#: Title, tone and summary of the statuses whose words do not depend on the grant.
_FIXED: dict[str, tuple[str, str, str]] = {
    "misbound": (
        "Stopped: signed in for the wrong organisation",
        "bad",
        "Your provider issued or renewed this connection's sign-in for a different organisation "
        "or record, so syncsvc stopped using it and deleted it. The service operator must check "
        "the provider's setup; reconnecting will not help until then.",
    ),
    "error": (
        "Stopped because of a problem",
        "bad",
        "Syncing stopped because of a problem on our side or your provider's. The service "
        "operator can see it; you do not need to do anything.",
    ),
    "revoked": ("Disconnected", "muted", "This connection has ended; nothing is synced any more."),
}


def _headline(facts: GrantFacts) -> tuple[str, str, str]:
    status, reason = facts.status, facts.reason
    if status == "active" and not facts.readable_types:
        status, reason = "no_access", NO_READABLE_TYPE  # never "connected" while nothing is read
    if status == "active":
        if not facts.has_refresh_token:
            return "Connected until your provider's access expires", "warn", _offline_summary(facts)
        return "Connected", "ok", KEPT_UP_TO_DATE
    if status == "no_access":
        if reason == SCOPES_WITHDRAWN:
            return (
                "Nothing can be synced any more",
                "bad",
                "Your provider stopped letting this service read any part of your health record, "
                "so nothing is synced any more. What was synced before is kept. Reconnect to "
                "share your record again.",
            )
        return (
            "Nothing can be synced",
            "bad",
            "Your provider did not let this service read any part of your health record, so "
            "nothing can be synced. Reconnect and allow access to your record; if your provider "
            "gives you no choice, its setup for this service needs fixing and the service "
            "operator can see that.",
        )
    if status == "needs_reauth":
        if reason == OFFLINE_ACCESS_NOT_GRANTED:
            summary = OFFLINE_ACCESS_EXPIRED_MESSAGE
        else:
            summary = (
                "Your provider no longer accepts this connection, so your record is not being "
                "updated. Reconnect to continue."
            )
        return "Needs you to reconnect", "warn", summary
    return _FIXED.get(status, _FIXED["error"])


def headline(facts: GrantFacts) -> tuple[str, str]:
    """The title and tone :func:`explain` gives: from the status, its reason, the readable types
    and the refresh token alone, so a list of connections needs no per-type rows."""
    title, tone, _summary = _headline(facts)
    return title, tone


#: Page headings by title; a title not listed is its own heading.
_HEADINGS = {
    "Connected": "Your record is connected",
    "Connected until your provider's access expires": (
        "Your record is connected until your provider's access expires"
    ),
    "Nothing can be synced": "Nothing from your record can be synced",
    "Nothing can be synced any more": "Nothing from your record can be synced any more",
    "Needs you to reconnect": "Your record needs you to reconnect",
    "Stopped: signed in for the wrong organisation": "Your record could not be connected safely",
    "Stopped because of a problem": "Syncing your record stopped because of a problem",
    "Disconnected": "Your record is disconnected",
}


def explain(facts: GrantFacts) -> Explanation:
    """The connection's state in sentences (see the module docstring for the rules)."""
    title, tone, summary = _headline(facts)
    types = _types(facts)
    sentences: list[str] = []
    if facts.status == "needs_reauth" and facts.status_message:
        if facts.reason != OFFLINE_ACCESS_NOT_GRANTED:
            sentences.append(facts.status_message)
    elif facts.status in ("misbound", "error") and facts.status_message:
        sentences.append(facts.status_message)
    if facts.status in ("active", "needs_reauth", "error", "no_access"):
        sentences.extend(
            f"Your provider shared only part of your {line.description} ({line.type}): "
            f"{line.shared}; the rest is not synced."
            for line in types
            # A type none of whose shared parts can be searched is said in one sentence below.
            if line.shared is not None and line.state != UNSEARCHABLE
        )
        sentences.extend(
            cannot
            for line in types
            if (cannot := _cannot_search(line, facts.types.get(line.type, TypeFacts())))
        )
        withdrawn = [line.sentence for line in types if line.state == "withdrawn"]
        withdrawn.extend(
            stopped
            for line in types
            if (stopped := _stopped_sharing(line, facts.types.get(line.type, TypeFacts())))
        )
        sentences.extend(withdrawn)
        if withdrawn and facts.status == "active":
            sentences.append("Reconnect to share the types that stopped updating again.")
        if facts.status != "no_access" or facts.reason == NO_READABLE_TYPE:
            report = grant_report(
                facts.requested_scopes,
                facts.granted_scopes,
                has_refresh_token=facts.has_refresh_token,
            )
            withdrawn_types = {line.type for line in types if line.state == "withdrawn"}
            sentences.extend(
                sentence
                for scope, sentence in zip(report.trimmed, explain_trimmed(report), strict=True)
                # Offline access is the summary's own subject; withdrawn types are said above,
                # and the shared types in the references sentence.
                if scope.lower() != "offline_access"
                and not any(f"({t})" in sentence for t in withdrawn_types | set(REFERENCED_TYPES))
            )
    kept = facts.status == "active" and facts.has_refresh_token and bool(list(facts.readable_types))
    can_reconnect = facts.status in RECONNECTABLE_STATUSES or (
        facts.status == "active"
        and (
            not facts.has_refresh_token
            or any(line.state == "withdrawn" for line in types)
            or any(t.withdrawn_parts for t in facts.types.values())
        )
    )
    return Explanation(
        status=facts.status,
        reason=facts.reason,
        title=title,
        heading=_HEADINGS.get(title, title),
        tone=tone,
        summary=summary,
        sentences=tuple(sentences),
        kept_up_to_date=kept,
        can_reconnect=can_reconnect,
        types=types,
        references=reference_sentence(facts.references, facts.status),
    )
