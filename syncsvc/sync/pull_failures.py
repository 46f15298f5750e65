"""How far a failure while pulling reaches: one type (:class:`TypeFailed`) or the whole run.

Requests are retried in place first (:mod:`syncsvc.sync.grant_client`). What still fails ends:

* one type: 403 ``insufficient_scope`` (``denied`` until the grant changes), the refusals of
  :data:`~syncsvc.vocabulary.REFUSAL_KINDS` (``error``), a ``next`` link outside the base, a
  paging loop, a page over the tenant's caps; 5xx, 408, timeouts, resets and malformed answers
  (``transient_error``: retried on the type's own back-off).
* the whole run: 401 tenant-mismatch (``misbound``), a 429 (the tenant is throttling), no
  connection to the base at all, a grant that can no longer be refreshed (``reauth``), a token
  that cannot be had right now, and transient trouble of syncsvc's own making (``transient``).

The statuses and outcomes they carry are the vocabulary's (:mod:`syncsvc.vocabulary`).
"""

from __future__ import annotations

from collections.abc import Sequence

from syncsvc.errors import Misbound, ReauthRequired, SyncsvcError, Transient
from syncsvc.fhir.client import FhirRequestError, ForeignNextLink, PagingLoop, RequestTransient
from syncsvc.fhir.page_limits import PageTooLarge
from syncsvc.sync.grant_client import TokenUnavailable
from syncsvc.vocabulary import REFUSAL_KINDS, PullOutcome, TypeRunStatus

#: Transient reasons of syncsvc's own making, which end the whole run rather than count against
#: a type: another writer stored this connection's resources (its lease was lost), a
#: page-decoding process died, or the connection was disconnected while it synced.
_RUN_TRANSIENTS = frozenset({"concurrent_write", "lost_lease", "decoder_failed", "disconnected"})
#: Which of several stops of one run is reported (lower first).
_STOP_RANK: dict[PullOutcome, int] = {"misbound": 0, "reauth": 1}


class StopRun(Exception):
    """A failure that ends the whole run."""

    def __init__(
        self,
        outcome: PullOutcome,
        error_class: str,
        message: str,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.error_class = error_class
        self.message = message
        self.retry_after = retry_after
        #: The type it happened on (set where the run's types are pulled).
        self.resource_type: str | None = None


class TypeFailed(Exception):
    """A failure that ends one type; the run goes on with the next."""

    def __init__(
        self,
        status: TypeRunStatus,
        error_class: str,
        message: str,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_class = error_class
        self.message = message
        self.retry_after = retry_after


def widest(stops: Sequence[StopRun]) -> StopRun:
    """The stop a run reports of several: a misbound token is not reported as a mere 503."""
    return min(stops, key=lambda stop: _STOP_RANK.get(stop.outcome, len(_STOP_RANK)))


def failure_of(exc: SyncsvcError) -> TypeFailed | StopRun:
    """What a failure while fetching or storing a type ends: the type, or the whole run."""
    if isinstance(exc, TokenUnavailable):
        # No token to send: nothing of the connection can be pulled now.
        exc = exc.cause
    elif isinstance(exc, FhirRequestError):
        return _classify(exc)
    elif isinstance(exc, ForeignNextLink | PagingLoop | PageTooLarge):
        return TypeFailed("error", exc.reason, exc.message)
    elif isinstance(exc, RequestTransient) and exc.reason == "unreachable":
        # No connection to the base at all: the whole EHR is down, not one search.
        return StopRun("transient", exc.reason, exc.message)
    elif isinstance(exc, Transient) and exc.reason not in _RUN_TRANSIENTS:
        # A timeout, a reset or a malformed answer on one type's request, after its retries.
        return TypeFailed("transient_error", exc.reason, exc.message, exc.retry_after)
    if isinstance(exc, Transient):
        return StopRun("transient", exc.reason, exc.message, exc.retry_after)
    if isinstance(exc, ReauthRequired):
        return StopRun("reauth", exc.reason, exc.message)
    if isinstance(exc, Misbound):
        return StopRun("misbound", exc.reason, exc.message)
    # Anything else the token source raises (a lost refresh race, say): try again later.
    return StopRun("transient", exc.reason, exc.message)


def _classify(exc: FhirRequestError) -> TypeFailed | StopRun:
    failure = exc.failure
    if failure.kind == "insufficient_scope":
        return TypeFailed("denied", failure.kind, failure.detail)
    if failure.kind == "tenant_mismatch":
        return StopRun("misbound", failure.kind, failure.detail)
    if failure.kind == "upstream_5xx" or failure.status == 408:
        # One search broken (a Condition search answering 503 for one record, say): that type
        # waits for its own retry; the rest of the record goes on.
        return TypeFailed("transient_error", failure.kind, failure.detail, failure.retry_after)
    if failure.kind in REFUSAL_KINDS:
        return TypeFailed("error", failure.kind, failure.detail)
    # throttled (the tenant wants every connection to wait), and an invalid_token that a fresh
    # token did not cure.
    return StopRun("transient", failure.kind, failure.detail, failure.retry_after)
