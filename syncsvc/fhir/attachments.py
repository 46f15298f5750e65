"""The attachments of clinical documents as FHIR gives them, and the rules for fetching them.

A DocumentReference carries its documents in ``content[].attachment`` and a DiagnosticReport its
readable forms in ``presentedForm[]``; each is an R4 ``Attachment``: a ``url`` (often a
``Binary``, absolute or relative to the base) or inline base64 ``data``, with a declared
``contentType``, ``size`` and SHA-1 ``hash``.

Oracle Health (Cerner) serves a Binary by the ``Accept`` header: the attachment's own
``contentType`` returns the raw content, ``application/fhir+json`` a FHIR ``Binary`` resource
with the content in base64 ``data`` (Oracle's Millennium R4 Binary documentation). Epic behaves
alike and points at its Binaries with relative ``Binary/{id}`` URLs. Both answers are understood
here, whichever of them a server sends.

Only the content types of :data:`ALLOWED_TYPES` are kept: documents a person reads (PDF, HTML,
plain text, RTF, XML and CDA) and common images. A URL outside the connection's exact FHIR base
is never requested: the bearer token goes only under that base.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from syncsvc.fhir.urls import is_under_base
from syncsvc.vocabulary import ATTACHMENT_ELEMENTS

#: Content types stored (canonical spellings: see :data:`_ALIASES`).
ALLOWED_TYPES = frozenset(
    {
        "application/pdf",
        "text/html",
        "application/xhtml+xml",
        "text/plain",
        "text/rtf",
        "application/xml",
        "application/hl7-v3+xml",
        "application/cda+xml",
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/tiff",
    }
)
#: Spellings of one type that EHRs use interchangeably.
_ALIASES = {
    "application/rtf": "text/rtf",
    "text/richtext": "text/rtf",
    "text/xml": "application/xml",
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "application/x-pdf": "application/pdf",
}
#: Types a FHIR server answers with when it wraps the content in a Binary resource.
FHIR_JSON_TYPES = frozenset({"application/fhir+json", "application/json", "application/json+fhir"})
FHIR_JSON = "application/fhir+json"
#: Types shown to a browser only inside a CSP sandbox (they can carry script).
ACTIVE_TYPES = frozenset({"text/html", "application/xhtml+xml", "application/xml"})
#: Attachments read from one resource at most: a real document has one to three renderings.
MAX_ATTACHMENTS_PER_RESOURCE = 20
#: The longest media type accepted (RFC 6838: 127 characters each side of the slash).
_MAX_MEDIA_TYPE = 255


def media_type(value: object) -> str | None:
    """The canonical ``type/subtype`` of a Content-Type value, or None if it names none."""
    if not isinstance(value, str) or len(value) > _MAX_MEDIA_TYPE:
        return None
    kind = value.split(";", 1)[0].strip().lower()
    main, slash, sub = kind.partition("/")
    if not slash or not main or not sub or any(c.isspace() or c in '",\\' for c in kind):
        return None
    return _ALIASES.get(kind, kind)


def charset(value: str | None) -> str | None:
    """The ``charset`` parameter of a Content-Type value, lower-cased, if it has a sane one."""
    if not value:
        return None
    for parameter in value.split(";")[1:]:
        name, _, given = parameter.partition("=")
        if name.strip().lower() == "charset":
            found = given.strip().strip('"').lower()
            if found and len(found) <= 40 and all(c.isalnum() or c in "-_.:" for c in found):
                return found
    return None


def stored_type(media: str, header: str | None) -> str:
    """The Content-Type a stored content is served with: its type, with a text type's charset."""
    found = charset(header)
    return f"{media}; charset={found}" if found and media.startswith("text/") else media


@dataclass(frozen=True, slots=True)
class AttachmentRef:
    """One attachment of a resource, as declared."""

    position: int
    url: str | None
    #: The declared ``contentType`` as given, and its canonical media type.
    content_type: str | None
    media: str | None
    size: int | None
    hash: str | None
    title: str | None
    #: Inline base64 content, if the attachment carries its data.
    data: str | None

    def fingerprint(self, version_id: str | None, last_updated: str | None) -> str:
        """What decides whether the attachment is fetched again, as one SHA-256 hex string."""
        inline = hashlib.sha256(self.data.encode()).hexdigest() if self.data else None
        parts = [
            version_id,
            last_updated,
            self.url,
            self.content_type,
            self.size,
            self.hash,
            inline,
        ]
        return hashlib.sha256(orjson.dumps(parts)).hexdigest()


def _text(value: object, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def attachments_of(resource_type: str, resource: dict[str, Any]) -> list[AttachmentRef]:
    """The attachments of a DocumentReference or DiagnosticReport, in order (at most 20)."""
    element = ATTACHMENT_ELEMENTS.get(resource_type)
    items = resource.get(element) if element else None
    if not isinstance(items, list):
        return []
    found: list[AttachmentRef] = []
    for position, item in enumerate(items[:MAX_ATTACHMENTS_PER_RESOURCE]):
        attachment = item.get("attachment") if resource_type == "DocumentReference" else item
        if not isinstance(item, dict) or not isinstance(attachment, dict):
            continue
        url, data = attachment.get("url"), attachment.get("data")
        if not isinstance(url, str) and not isinstance(data, str):
            continue  # neither a link nor content: nothing to fetch
        size = attachment.get("size")
        declared = _text(attachment.get("contentType"), _MAX_MEDIA_TYPE)
        found.append(
            AttachmentRef(
                position=position,
                url=url if isinstance(url, str) and url else None,
                content_type=declared,
                media=media_type(declared),
                size=size if type(size) is int and size >= 0 else None,
                hash=_text(attachment.get("hash"), 128),
                title=_text(attachment.get("title"), 200),
                data=data if isinstance(data, str) and data else None,
            )
        )
    return found


def resolve(url: str, base: str) -> str | None:
    """The absolute URL to fetch for ``url`` if it lies under ``base``, else None.

    A relative reference (Epic's ``Binary/{id}``) is resolved against the base, then checked
    like any other URL: ``../`` tricks and encoded slashes are refused by the same rule.
    """
    base = base.rstrip("/")
    parts = urlsplit(url)
    if not parts.scheme and not parts.netloc:
        if url.startswith("/") or not url:
            return None
        url = f"{base}/{url}"
    return url if is_under_base(url, base) else None


def is_web_url(url: str) -> bool:
    """Whether ``url`` is an http(s) URL (anything else, such as ``urn:uuid:``, is not fetched)."""
    parts = urlsplit(url)
    relative = not parts.scheme and not parts.netloc
    return relative or parts.scheme.lower() in ("http", "https")


class NotABinary(ValueError):
    """A FHIR JSON answer that is not a Binary with base64 data."""


def unwrap_binary(body: bytes) -> tuple[str | None, bytes]:
    """The declared content type and decoded content of a FHIR Binary resource's JSON."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise NotABinary("the answer is not JSON") from exc
    if not isinstance(document, dict) or document.get("resourceType") != "Binary":
        raise NotABinary("the answer is not a Binary resource")
    data = document.get("data")
    if not isinstance(data, str):
        raise NotABinary("the Binary has no data")
    content_type = document.get("contentType")
    return (content_type if isinstance(content_type, str) else None), decode_base64(data)


def decode_base64(data: str) -> bytes:
    """Strictly decoded base64 (whitespace allowed, as XML renderings wrap it)."""
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NotABinary("the data is not base64") from exc
