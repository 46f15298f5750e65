"""What a resource type's sync state means, in the same words on every surface.

The status page, ``connections show``, the host API and tenant health all say why a type is not
up to date through these functions, from the type's ``sync_states`` row, so they cannot drift
apart. Only ``transient_error`` and ``failing`` get a sentence here (a type that is fine needs
none; a denied type is explained with the grant).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from syncsvc.db.models.records import SyncState
from syncsvc.smart.scope_grammar import Part
from syncsvc.smart.scopes import RESOURCE_DESCRIPTIONS

#: Category codes in words (US Core's and FHIR's category code systems); others print as codes.
CATEGORY_WORDS: dict[str, str] = {
    "laboratory": "laboratory results",
    "vital-signs": "vital signs",
    "social-history": "social history",
    "survey": "surveys",
    "imaging": "imaging results",
    "exam": "exam findings",
    "procedure": "procedure results",
    "therapy": "therapy records",
    "activity": "activity records",
    "sdoh": "social needs",
    "functional-status": "functional status",
    "disability-status": "disability status",
    "cognitive-status": "cognitive status",
    "problem-list-item": "problem list",
    "encounter-diagnosis": "visit diagnoses",
    "health-concern": "health concerns",
    "clinical-note": "clinical notes",
    "LAB": "laboratory reports",
    "RAD": "radiology reports",
    "assess-plan": "assessments and plans",
    "community": "community prescriptions",
    "inpatient": "hospital prescriptions",
    "outpatient": "outpatient prescriptions",
    "discharge": "discharge prescriptions",
}


def moment(value: dt.datetime) -> str:
    """A time as these sentences print it (``04 Dec 2026, 23:10 UTC``)."""
    return f"{value.astimezone(dt.UTC):%d %b %Y, %H:%M} UTC"


def type_sentence(state: SyncState | None) -> str | None:
    """The patient-facing sentence for a type that is not being returned, or None."""
    if state is None:
        return None
    return state_sentence(
        state.resource_type,
        state.status,
        last_success_at=state.last_success_at,
        failing_since=state.failing_since,
        next_attempt_at=state.next_attempt_at,
    )


def state_sentence(
    resource_type: str,
    status: str,
    *,
    last_success_at: dt.datetime | None,
    failing_since: dt.datetime | None,
    next_attempt_at: dt.datetime | None,
) -> str | None:
    """:func:`type_sentence` from the state's columns (``syncsvc.sync.explain`` words types so)."""
    if status not in ("transient_error", "failing"):
        return None
    what = RESOURCE_DESCRIPTIONS.get(resource_type, resource_type)
    if status == "failing":
        since = last_success_at or failing_since
        when = f"since {moment(since)}" if since is not None else "yet"
        return (
            f"Your provider's system has not returned your {what} ({resource_type}) "
            f"{when}. Everything else is kept up to date; we keep asking every few hours."
        )
    retry = next_attempt_at
    again = f"at {moment(retry)}" if retry is not None else "soon"
    return (
        f"Your provider's system did not return your {what} ({resource_type}) at the "
        f"last try. We will ask again {again}."
    )


def _part_words(part: Part) -> str:
    words = []
    for name, value in part:
        codes = [token.rpartition("|")[2] for token in value.split(",") if token]
        if name == "category":
            words.append(" or ".join(CATEGORY_WORDS.get(code, code) for code in codes))
        else:
            words.append(f"{name} {' or '.join(codes)}")
    return ", ".join(words)


def shared_words(parts: Sequence[Part] | None) -> str | None:
    """How much of a type a grant shared, in words ("laboratory results only"); None: all of it.

    Every surface (status page, ``connections show``, the host API, webhooks) says which parts
    of a type were shared through this function.
    """
    if parts is None:
        return None
    if not parts:
        return "nothing"
    named = list(dict.fromkeys(_part_words(part) for part in parts))
    listed = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
    return f"{listed} only"


def tenant_type_sentence(resource_type: str, connections: int, of: int) -> str:
    """The operator's sentence for a type failing at a tenant for ``connections`` of ``of``."""
    return (
        f"{resource_type} searches fail at this tenant ({connections} of {of} active "
        f"connections have {resource_type} failing)."
    )
