"""Reading attachments from FHIR resources, resolving their URLs against a base, their types."""

from __future__ import annotations

import base64

import orjson
import pytest

from syncsvc.db.attachment_repo import AttachmentSummary
from syncsvc.fhir.attachments import (
    NotABinary,
    attachments_of,
    media_type,
    resolve,
    stored_type,
    unwrap_binary,
)
from syncsvc.sync.attachment_words import REASON_WORDS, attachment_sentence
from syncsvc.vocabulary import ATTACHMENT_REASONS

BASE = "https://fhir.example.org/r4/tenant-a"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("Binary/abc", f"{BASE}/Binary/abc"),
        (f"{BASE}/Binary/abc", f"{BASE}/Binary/abc"),
        ("https://fhir.example.org/r4/tenant-b/Binary/abc", None),
        (f"{BASE}-evil/Binary/abc", None),
        ("../tenant-b/Binary/abc", None),
        ("Binary/%2e%2e/%2e%2e/x", None),
        ("/r4/tenant-a/Binary/abc", None),
        ("http://fhir.example.org/r4/tenant-a/Binary/abc", None),
        ("https://user@fhir.example.org/r4/tenant-a/Binary/abc", None),
        ("", None),
    ],
)
def test_only_urls_under_the_exact_base_resolve(url: str, expected: str | None) -> None:
    assert resolve(url, BASE) == expected


def test_media_types_are_canonical_and_malformed_ones_are_none() -> None:
    assert media_type("Application/PDF; charset=binary") == "application/pdf"
    assert media_type("application/rtf") == "text/rtf"
    assert media_type("text/xml") == "application/xml"
    for bad in (None, "", "pdf", "text/ html", "text/plain\r\nX-Evil: 1", 7, "a/" + "b" * 300):
        assert media_type(bad) is None
    assert stored_type("text/html", "text/html; charset=UTF-8") == "text/html; charset=utf-8"
    assert stored_type("application/pdf", "application/pdf; charset=utf-8") == "application/pdf"


def test_attachments_are_read_from_content_and_presented_form() -> None:
    document = {
        "content": [
            {"attachment": {"contentType": "text/html", "url": "Binary/a", "size": 10}},
            {"format": {"code": "x"}},  # no attachment
            {"attachment": {"contentType": "text/plain", "data": "aGk=", "size": -1}},
        ]
    }
    report = {"presentedForm": [{"contentType": "application/pdf", "url": "Binary/b"}]}

    refs = attachments_of("DocumentReference", document)
    assert [(r.position, r.url, r.media, r.size, r.data) for r in refs] == [
        (0, "Binary/a", "text/html", 10, None),
        (2, None, "text/plain", None, "aGk="),
    ]
    [form] = attachments_of("DiagnosticReport", report)
    assert (form.position, form.url, form.media) == (0, "Binary/b", "application/pdf")
    assert attachments_of("Observation", document) == []
    many = {"content": [{"attachment": {"url": f"Binary/{n}"}} for n in range(50)]}
    assert len(attachments_of("DocumentReference", many)) == 20
    # Anything that decides a fetch changes the fingerprint.
    first = refs[0].fingerprint("1", "2025-01-01T00:00:00+00:00")
    assert first != refs[0].fingerprint("2", "2025-01-01T00:00:00+00:00")
    assert first == refs[0].fingerprint("1", "2025-01-01T00:00:00+00:00")


def test_a_binary_resource_is_unwrapped_strictly() -> None:
    body = orjson.dumps(
        {"resourceType": "Binary", "contentType": "application/pdf", "data": "JVBERi0x\nLjQ="}
    )
    assert unwrap_binary(body) == ("application/pdf", base64.b64decode("JVBERi0xLjQ="))
    for bad in (
        b"nope",
        b"{}",
        b'{"resourceType":"Binary"}',
        b'{"resourceType":"Binary","data":"!!"}',
    ):
        with pytest.raises(NotABinary):
            unwrap_binary(bad)


def test_every_reason_has_words_and_the_sentence_counts_them() -> None:
    assert set(REASON_WORDS) == set(ATTACHMENT_REASONS)
    summary = AttachmentSummary(
        by_status={"stored": 3, "refused": 1, "failed": 2},
        by_reason={"refused": {"outside_base": 1}, "failed": {"transient": 2}},
        stored_bytes=3 * 1024 * 1024,
        stored_contents=2,
    )
    sentence = attachment_sentence(summary)
    assert sentence.startswith("3 document attachments stored (3.0 MB)")
    assert "1 refused (1 pointing outside this provider's FHIR server" in sentence
    assert "2 not fetched yet, tried again at the next sync (2 not answered in time" in sentence
    assert attachment_sentence(None) == "No document attachments have been found yet."
