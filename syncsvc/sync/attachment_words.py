"""What became of a connection's document attachments, in numbers and in words, for every surface.

The host API's connection view, its attachments listing and ``connections show`` all take their
attachment summary from :func:`attachment_view`, so they cannot disagree. The states and reasons
are the vocabulary's (:mod:`syncsvc.vocabulary`).
"""

from __future__ import annotations

from typing import Any

from syncsvc.db.attachment_repo import AttachmentSummary
from syncsvc.vocabulary import ATTACHMENT_STATES

#: Why an attachment was not stored, as a clause about it (one per ``ATTACHMENT_REASONS``).
REASON_WORDS: dict[str, str] = {
    "too_large": "larger than the limit for one document",
    "connection_cap": "over this connection's storage limit",
    "type_not_allowed": "of a kind of file syncsvc does not keep",
    "type_mismatch": "sent as another kind of file than the provider declared",
    "not_granted": "not covered by the access granted (document contents)",
    "outside_base": (
        "pointing outside this provider's FHIR server, so it was not requested and the "
        "access token was not sent there"
    ),
    "unusable_url": "pointing at something that is not a web address",
    "bad_data": "unreadable as sent",
    "denied": "refused by the provider",
    "not_found": "no longer at the provider",
    "http_error": "answered with an error by the provider",
    "transient": "not answered in time by the provider",
}


def _size(count: int) -> str:
    if count >= 1024 * 1024:
        return f"{count / (1024 * 1024):.1f} MB"
    if count >= 1024:
        return f"{count / 1024:.1f} KB"
    return f"{count} bytes"


def _because(by_reason: dict[str, int]) -> str:
    parts = [
        f"{count} {REASON_WORDS.get(reason, reason)}"
        for reason, count in sorted(by_reason.items(), key=lambda item: -item[1])
    ]
    return "; ".join(parts)


def attachment_sentence(summary: AttachmentSummary | None) -> str:
    """One sentence about a connection's document attachments."""
    if summary is None or not summary.total:
        return "No document attachments have been found yet."
    counts = summary.by_status
    stored = counts.get("stored", 0)
    parts = [
        f"{stored} document attachment{'s' if stored != 1 else ''} stored "
        f"({_size(summary.stored_bytes)})"
    ]
    for state, verb in (
        ("refused", "refused"),
        ("skipped", "not kept"),
        ("failed", "not fetched yet, tried again at the next sync"),
    ):
        count = counts.get(state, 0)
        if count:
            because = _because(summary.by_reason.get(state, {}))
            parts.append(f"{count} {verb} ({because})")
    return "; ".join(parts) + "."


def attachment_view(summary: AttachmentSummary | None) -> dict[str, Any]:
    """The attachments of one connection as every surface shows them."""
    counts = summary.by_status if summary is not None else {}
    return {
        **{state: counts.get(state, 0) for state in ATTACHMENT_STATES},
        "stored_bytes": summary.stored_bytes if summary is not None else 0,
        "stored_contents": summary.stored_contents if summary is not None else 0,
        "reasons": summary.by_reason if summary is not None else {},
        "sentence": attachment_sentence(summary),
    }
