"""Clinical documents of the sandbox: the attachments its resources point at, served as Binary.

Each vendor profile shapes a document the way its EHR does:

* Cerner-shaped tenants point ``DocumentReference.content[].attachment.url`` and
  ``DiagnosticReport.presentedForm[].url`` at absolute ``{base}/Binary/{id}`` URLs, a PDF and an
  HTML rendering of the same note.
* Epic-shaped tenants give relative ``Binary/{id}`` URLs, the note in HTML and in RTF.
* The generic tenant links one plain-text Binary per note and puts a radiology report's text
  inline (``attachment.data``).

A Binary is served as Oracle Health documents it (and as Epic behaves): ``Accept`` naming the
attachment's ``contentType`` returns the raw bytes with that type; ``Accept:
application/fhir+json`` returns a FHIR ``Binary`` resource with the bytes in base64 ``data``.
Cerner- and Epic-shaped tenants answer any other ``Accept`` with 406; the generic tenant sends
the raw bytes, as most FHIR servers do.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from .config import TenantConfig
from .outcomes import operation_outcome

FHIR_JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")


@dataclass(frozen=True)
class BinaryEntry:
    """A Binary's content, the type it is declared and served as, and the patient it belongs to.

    ``served_as`` lets a test make the EHR answer with another type than the attachment says.
    """

    patient_id: str
    content_type: str
    content: bytes
    meta_ms: int = 0
    #: The resource whose attachment this is (``DocumentReference/x``): the security context.
    owner: str = ""
    served_as: str | None = None

    def resource(self, binary_id: str, last_updated: str) -> bytes:
        """The FHIR Binary resource of this content."""
        document: dict[str, Any] = {
            "resourceType": "Binary",
            "id": binary_id,
            "meta": {"versionId": "1", "lastUpdated": last_updated},
            "contentType": self.content_type,
            "data": base64.b64encode(self.content).decode("ascii"),
        }
        if self.owner:
            document["securityContext"] = {"reference": self.owner}
        return orjson.dumps(document)


@dataclass(frozen=True)
class Rendering:
    """One rendering of a note: its MIME type and bytes."""

    content_type: str
    content: bytes


def pad(text: str, size: int) -> str:
    """``text`` followed by filler lines up to about ``size`` characters (0: as it is)."""
    if size <= len(text):
        return text
    line = "Continued: no change in the findings above; plan as documented.\n"
    return text + line * ((size - len(text)) // len(line) + 1)


def as_html(title: str, text: str) -> bytes:
    """A note as a small HTML document."""
    paragraphs = "".join(f"<p>{html.escape(line)}</p>" for line in text.splitlines() if line)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"</head><body><h1>{html.escape(title)}</h1>{paragraphs}</body></html>"
    ).encode()


def as_rtf(title: str, text: str) -> bytes:
    """A note as a small RTF document."""

    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace("{", "\\{").replace("}", "\\}")

    lines = "".join(f"{escape(line)}\\par\n" for line in text.splitlines())
    return f"{{\\rtf1\\ansi\\deff0 {{\\b {escape(title)}}}\\par\n{lines}}}".encode()


def as_pdf(title: str, text: str) -> bytes:
    """A note as a minimal one-page PDF (valid structure, cross-reference table included)."""
    lines = [title, *text.splitlines()][:60]

    def literal(value: str) -> str:
        return value.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    ops = ["BT", "/F1 11 Tf", "14 TL", "50 780 Td"]
    ops += [f"({literal(line.encode('latin-1', 'replace').decode('latin-1'))}) '" for line in lines]
    ops.append("ET")
    stream = "\n".join(ops).encode("latin-1")
    # Filler beyond the page's text keeps the document's size what the configuration asks.
    extra = text.encode("latin-1", "replace")[len(stream) :]
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    if extra:
        out += b"%" + extra.replace(b"\n", b"\n%") + b"\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def renderings(vendor: str, title: str, text: str) -> list[Rendering]:
    """The renderings a vendor's EHR offers of one note, in its order."""
    if vendor == "cerner":
        return [
            Rendering("application/pdf", as_pdf(title, text)),
            Rendering("text/html", as_html(title, text)),
        ]
    if vendor == "epic":
        return [
            Rendering("text/html", as_html(title, text)),
            Rendering("text/rtf", as_rtf(title, text)),
        ]
    return [Rendering("text/plain", text.encode())]


def binary_url(vendor: str, base: str, binary_id: str) -> str:
    """Where a vendor's resource points at a Binary: relative at Epic, absolute elsewhere."""
    return f"Binary/{binary_id}" if vendor == "epic" else f"{base}/Binary/{binary_id}"


def _media_types(accept: str) -> list[str]:
    return [part.split(";")[0].strip().lower() for part in accept.split(",") if part.strip()]


def binary_response(
    request: web.Request,
    tenant: TenantConfig,
    binary_id: str,
    entry: BinaryEntry,
    last_updated: str,
) -> web.Response:
    """A Binary read answered by ``Accept``: the FHIR resource, the raw bytes, or 406."""
    vendor = tenant.vendor
    wanted = _media_types(request.headers.get("Accept", ""))
    declared = entry.content_type.split(";")[0].strip().lower()
    if tenant.policy.binary_as_resource or any(kind in FHIR_JSON_TYPES for kind in wanted):
        body = entry.resource(binary_id, last_updated)
        return web.Response(body=body, content_type="application/fhir+json")
    if vendor in ("cerner", "epic") and declared not in wanted:
        return operation_outcome(
            406,
            "not-supported",
            f"Accept must be application/fhir+json or {entry.content_type} for this Binary",
        )
    served = entry.served_as or entry.content_type
    return web.Response(body=entry.content, headers={"Content-Type": served})
