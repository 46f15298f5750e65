"""Reading EHR error answers: OAuth error redirects, token errors and FHIR 401/403 bodies.

Vendors add detail in their own shapes. Cerner puts a URN inside ``error_uri``
(``.../errors/<urlencoded urn>/instances/<uuid>?...``) and, on the resource server, inside a JSON
``message``; Epic answers 403 with an empty body and a ``WWW-Authenticate`` header. This module
turns all of them into one small vocabulary the rest of syncsvc acts on.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import orjson

from syncsvc.logging import redact_text
from syncsvc.vocabulary import FhirFailureKind

TENANT_MISMATCH_URN = "urn:cerner:error:oauth2:resource-access:tenant-mismatch"
INSUFFICIENT_SCOPES_URN = "urn:cerner:error:oauth2:resource-access:insufficient-scopes"

_URN_IN_PATH = re.compile(r"/errors/(?P<urn>[^/]+)/instances/")
_WWW_AUTH_PARAM = re.compile(r'(?P<key>[a-zA-Z_]+)="(?P<value>[^"]*)"')

#: Cerner's missing-patient, persona and launch-code answers to a standalone patient launch come
#: from how the application is registered there (for clinicians, or for launch from inside the
#: EHR), not from anything the patient did: signing in again cannot help.
_REGISTRATION_EXPLANATION = (
    "Your provider's setup for this application did not allow your record to be shared with "
    "it, so nothing was connected. This is not something you did wrong, and signing in again "
    "will not help: the service operator has been told and must have the application's "
    "registration at your provider fixed."
)

#: What each known authorization answer means, in words a patient can act on.
_AUTHORIZE_EXPLANATIONS: dict[str, str] = {
    "access_denied": (
        "You chose not to share your record, so nothing was connected. You can try again at "
        "any time."
    ),
    "missing-patient": _REGISTRATION_EXPLANATION,
    "invalid-launch-code": _REGISTRATION_EXPLANATION,
    "denied-by-server": (
        "The EHR's authorization server refused the request. The provider may not allow this "
        "application; contact the service operator."
    ),
    "client-persona-mismatch": _REGISTRATION_EXPLANATION,
    "invalid_scope": "The EHR refused the permissions requested. The operator must fix them.",
    "unauthorized_client": "The EHR does not allow this application to connect this way.",
    "invalid_request": "The EHR rejected the connection request as malformed.",
    "server_error": "The EHR had an internal error. Please try again later.",
    "temporarily_unavailable": "The EHR is temporarily unavailable. Please try again later.",
}


#: Error codes of RFC 6749 (§4.1.2.1, §5.2) and RFC 6750 (§3.1): the ones a page may name.
OAUTH_ERROR_CODES = frozenset(
    {
        "invalid_request",
        "unauthorized_client",
        "access_denied",
        "unsupported_response_type",
        "invalid_scope",
        "server_error",
        "temporarily_unavailable",
        "invalid_client",
        "invalid_grant",
        "unsupported_grant_type",
        "invalid_token",
        "insufficient_scope",
    }
)
#: Shown instead of a code syncsvc does not know: the EHR's own words are not repeated.
UNKNOWN_EHR_ERROR = "ehr_error"


def known_reason(code: str | None) -> str:
    """``code`` if syncsvc knows it (an OAuth code or an explained vendor code), else a fixed one.

    Whatever a server puts in ``error`` (or in an ``error_uri`` path) is chosen by whoever made
    the URL; a page repeating it would show an attacker's text ("please call 555-0100").
    """
    if code and (code in OAUTH_ERROR_CODES or code in _AUTHORIZE_EXPLANATIONS):
        return code
    return UNKNOWN_EHR_ERROR


@dataclass(frozen=True)
class OAuthError:
    """An OAuth error answer (redirect or token endpoint) with the vendor's URN if any."""

    error: str
    description: str | None = None
    error_uri: str | None = None

    @property
    def urn(self) -> str | None:
        """The Cerner-style URN carried in ``error_uri``, if any."""
        return urn_from_error_uri(self.error_uri)

    @property
    def reason(self) -> str:
        """The most specific short code: the URN's last segment, else the OAuth error code."""
        urn = self.urn
        return urn.rsplit(":", 1)[-1] if urn else self.error

    def explain(self) -> str:
        """A plain-words explanation of this error for the patient."""
        if "persona" in self.reason:
            return _REGISTRATION_EXPLANATION
        return _AUTHORIZE_EXPLANATIONS.get(self.reason) or _AUTHORIZE_EXPLANATIONS.get(
            self.error, "The EHR reported an error and nothing was connected."
        )


def urn_from_error_uri(error_uri: str | None) -> str | None:
    """The URN inside a Cerner-style ``error_uri``, or ``None``."""
    if not error_uri:
        return None
    match = _URN_IN_PATH.search(urlsplit(error_uri).path)
    if match is None:
        return None
    urn = unquote(match["urn"])
    return urn if urn.startswith("urn:") else None


def safe_error_uri(error_uri: str | None) -> str | None:
    """``error_uri`` if it is an http(s) URL that may be shown as a link, else ``None``."""
    if not error_uri:
        return None
    parts = urlsplit(error_uri)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return error_uri


def parse_www_authenticate(header: str | None) -> dict[str, str]:
    """The parameters of a ``Bearer`` challenge (``error``, ``error_description``, ``realm``)."""
    if not header:
        return {}
    return {m["key"].lower(): m["value"] for m in _WWW_AUTH_PARAM.finditer(header)}


@dataclass(frozen=True)
class FhirFailure:
    """What a non-2xx FHIR answer means for syncsvc."""

    kind: FhirFailureKind
    status: int
    detail: str
    retry_after: float | None = None


def _json_message(body: bytes) -> tuple[str, str]:
    """The Cerner ``message`` and an OperationOutcome's diagnostics text, if present."""
    try:
        doc = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return "", ""
    if not isinstance(doc, dict):
        return "", ""
    message = doc.get("message") if isinstance(doc.get("message"), str) else ""
    outcome = ""
    if doc.get("resourceType") == "OperationOutcome":
        texts = []
        for issue in doc.get("issue") or []:
            if isinstance(issue, dict):
                text = issue.get("diagnostics") or (issue.get("details") or {}).get("text")
                if isinstance(text, str):
                    texts.append(text)
                elif isinstance(issue.get("code"), str):
                    texts.append(f"issue code '{issue['code']}'")
        outcome = "; ".join(texts)
    return str(message), outcome


#: EHR error text kept with a connection or a run is cut to this many characters.
MAX_EHR_TEXT = 500
#: Social-security-like numbers (123-45-6789, 123 45 6789) inside an EHR's error text.
_SSN_LIKE = re.compile(r"\b\d{3}([- ])\d{2}\1\d{4}\b")


def ehr_text(text: str) -> str:
    """An EHR's own error text as syncsvc keeps it: redacted, then cut to MAX_EHR_TEXT.

    Diagnostics have been seen echoing the request, tokens and patient identifiers; none of
    that is stored, shown or sent on in webhooks.
    """
    cleaned = _SSN_LIKE.sub("[redacted-number]", redact_text(text))
    if len(cleaned) <= MAX_EHR_TEXT:
        return cleaned
    return cleaned[: MAX_EHR_TEXT - 1] + "…"


#: The longest ``Retry-After`` syncsvc takes at its word (a day); a longer one is cut to this.
#: Callers apply their own, shorter caps on top (a pause of the tenant, a wait in place).
MAX_RETRY_AFTER = 86400.0


def parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP-date (RFC 9110 10.2.3).

    A date is read relative to ``now`` (the wall clock when not given); a date already past
    means no wait (0). A wait longer than :data:`MAX_RETRY_AFTER` is cut to it. A value that is
    neither form (garbage, a negative or non-finite number) is ignored: None.
    """
    if not value or not value.strip():
        return None
    text = value.strip()
    seconds: float
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)  # HTTP-dates are GMT; "-0000" parses naive
        current = now if now is not None else dt.datetime.now(dt.UTC)
        seconds = max(0.0, (when - current).total_seconds())
    else:
        if math.isnan(seconds) or seconds < 0:
            return None
    return min(seconds, MAX_RETRY_AFTER)


def classify_fhir_failure(
    status: int, www_authenticate: str | None, retry_after: str | None, body: bytes
) -> FhirFailure:
    """Classify a non-2xx answer of a FHIR server."""
    challenge = parse_www_authenticate(www_authenticate)
    message, outcome = _json_message(body[:65536])
    outcome = ehr_text(outcome)
    description = ehr_text(challenge.get("error_description", ""))
    if status == 401:
        if TENANT_MISMATCH_URN in message or "not valid for this tenant" in description.lower():
            return FhirFailure(
                "tenant_mismatch", status, "The EHR says the token is not valid for this tenant"
            )
        return FhirFailure("invalid_token", status, description or "The access token was refused")
    if status == 403:
        if (
            INSUFFICIENT_SCOPES_URN in message
            or "insufficient_scope" in message
            or challenge.get("error") == "insufficient_scope"
        ):
            return FhirFailure(
                "insufficient_scope", status, "The grant does not cover this resource type"
            )
        return FhirFailure("forbidden", status, outcome or "The EHR refused access")
    if status == 429:
        return FhirFailure(
            "throttled", status, "The EHR is throttling requests", parse_retry_after(retry_after)
        )
    if status >= 500:
        return FhirFailure(
            "upstream_5xx",
            status,
            f"The EHR answered HTTP {status}",
            parse_retry_after(retry_after),
        )
    if status == 404:
        return FhirFailure("not_found", status, outcome or "Not found")
    if status == 410:
        return FhirFailure("gone", status, outcome or "Deleted at the EHR")
    if status == 400:
        return FhirFailure("bad_request", status, outcome or "The EHR rejected the search")
    return FhirFailure("unexpected", status, outcome or f"Unexpected HTTP {status}")
