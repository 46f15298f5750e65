"""The FHIR client of one run: a grant's current token on every request, retries in place.

Each request asks the run's token source for the token first. A 401 ``invalid_token`` (an
access token expiring mid-pull: Cerner's live 570 s) gets one forced token and one retry of the
same request. A failure worth asking again for (:mod:`syncsvc.sync.retry`: 502/503/504, 429,
408, a timeout, a reset) is retried in place a few times, after a jittered exponential wait or
the server's ``Retry-After`` (up to a cap), while the run's time budget lasts; only then does it
count against the type. A retry starts only if its wait and the request's read timeout both fit
in the budget. A type already retrying on its own schedule (``transient_error``, ``failing``)
gets one try per run and no retry in place: a tenant-wide broken type must not hold a tenant
slot for minutes of waits every run. Every retry (also the one after ``invalid_token``) is
counted by reason, in the run record and in the tenant's ``syncsvc_ehr_retries_total``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass

import aiohttp

from syncsvc.errors import SyncsvcError
from syncsvc.fhir.client import (
    FHIR_JSON,
    Fetched,
    FhirClient,
    FhirRequestError,
    ForeignNextLink,
    RequestTransient,
)
from syncsvc.fhir.page_limits import PageBudget, PageLimits, Reservation
from syncsvc.fhir.urls import is_under_base
from syncsvc.logging import get_logger
from syncsvc.sync.retry import DEFAULT_RETRY, RetryPolicy, retry_reason
from syncsvc.work_metrics import TenantMeter

log = get_logger("syncsvc.sync.grant_client")

AccessTokens = Callable[[bool], Awaitable[str]]
"""``get(force_refresh)`` → an access token of the connection's grant.

Called with ``False`` before each request, and with ``True`` once after a 401 ``invalid_token``.
A run hands in its :class:`~syncsvc.sync.token_source.TokenSource`.
"""
#: A monotonic clock in seconds and a sleep, injectable so the retry loop can be tested exactly.
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TokenUnavailable(SyncsvcError):
    """The token source could not give a token (``cause`` says why): no request was sent."""

    def __init__(self, cause: SyncsvcError) -> None:
        super().__init__(cause.message, reason=cause.reason)
        self.cause = cause


class GrantClient(FhirClient):
    """A FHIR client that asks a token source for the token before each request.

    The types of a run share the client, so a token refused to several requests at once is
    forced once: the others retry with the token that replaced it.
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base: str,
        token_source: AccessTokens,
        *,
        meter: TenantMeter | None = None,
        limits: PageLimits | None = None,
        budget: PageBudget | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        fail_fast: Collection[str] = frozenset(),
        request_timeout: float | None = None,
    ) -> None:
        super().__init__(http, base, "", meter=meter, limits=limits, budget=budget)
        #: The tenant's counters (requests, retries, resources, runs), when the run is metered.
        self.tenant_meter = meter
        self._source = token_source
        self.forced_refreshes = 0
        self._forcing = asyncio.Lock()
        #: Tokens a forced refresh has replaced in this run.
        self._replaced: set[str] = set()
        #: Set once the EHR has answered a request with success: the token is good for this base.
        self.answered = asyncio.Event()
        self._retry = retry
        self._clock = clock
        self._sleep = sleep
        self._deadline = clock() + retry.budget_seconds
        #: Resource types whose requests get no retry in place (already failing on their own
        #: schedule).
        self._fail_fast = frozenset(fail_fast)
        #: How long one more try may take: the session's read timeout, else its total.
        self._request_timeout = (
            request_timeout if request_timeout is not None else _read_timeout(http.timeout)
        )
        #: Retries made in this run, by reason (``http_503``, ``timeout``, ...).
        self.retries: Counter[str] = Counter()

    async def get_bytes(
        self,
        url: str,
        params: Mapping[str, str] | None = None,
        *,
        resource_type: str = "",
        held: list[Reservation] | None = None,
    ) -> bytes:
        """GET with a current token; retried in place while the failure is worth it."""
        fetched = await self.get_body(url, params, resource_type=resource_type, held=held)
        return fetched.body

    async def get_body(
        self,
        url: str,
        params: Mapping[str, str] | None = None,
        *,
        resource_type: str = "",
        held: list[Reservation] | None = None,
        accept: str = FHIR_JSON,
        cap_for: Callable[[str], int] | None = None,
    ) -> Fetched:
        """:meth:`get_bytes` with the answer's Content-Type, asking for ``accept``."""
        if not is_under_base(url, self.base):
            raise ForeignNextLink
        request = _Request(url, params, resource_type, held, accept, cap_for)
        attempts = 1 if resource_type in self._fail_fast else self._retry.attempts
        for attempt in range(1, attempts + 1):
            try:
                body = await self._get_once(request)
            except (FhirRequestError, RequestTransient) as exc:
                reason, delay = self._retry_after(exc, attempt, attempts)
                if reason is None:
                    raise
                self.retries[reason] += 1
                if self.tenant_meter is not None:
                    self.tenant_meter.retry(reason)
                log.debug("request retried", reason=reason, attempt=attempt, wait=round(delay, 3))
                await self._sleep(delay)
                continue
            self.answered.set()
            return body
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover

    def _retry_after(
        self, exc: SyncsvcError, attempt: int, attempts: int
    ) -> tuple[str | None, float]:
        """The reason and wait of a retry of a request that failed with ``exc``, if one is due."""
        if isinstance(exc, FhirRequestError):
            reason = retry_reason(exc.failure.status, None)
            retry_after = exc.failure.retry_after
        else:
            reason = retry_reason(None, exc.reason)
            retry_after = None
        if reason is None or attempt >= attempts:
            return None, 0.0
        if retry_after is not None and retry_after > self._retry.max_retry_after:
            return None, 0.0  # the server wants a long pause: the failure counts now
        delay = self._retry.backoff.delay(attempt, retry_after=retry_after)
        if self._clock() + delay + self._request_timeout > self._deadline:
            return None, 0.0  # the wait and the next try do not fit in the run's time budget
        return reason, delay

    async def _get_once(self, request: _Request) -> Fetched:
        token = await self._current_token(False)
        self.use_token(token)
        try:
            return await self._fetch(request)
        except FhirRequestError as exc:
            if exc.failure.kind != "invalid_token":
                raise
            self.use_token(await self._replacement(token))
            self.retries["invalid_token"] += 1
            if self.tenant_meter is not None:
                self.tenant_meter.retry("invalid_token")
            return await self._fetch(request)

    def _fetch(self, request: _Request) -> Awaitable[Fetched]:
        return self.fetch_body(
            request.url,
            request.params,
            resource_type=request.resource_type,
            held=request.held,
            accept=request.accept,
            cap_for=request.cap_for,
        )

    async def _current_token(self, force: bool) -> str:
        # Told apart from the EHR's answers: a token that cannot be had stops the whole run,
        # while a failed request may stop only its type.
        try:
            return await self._source(force)
        except SyncsvcError as exc:
            raise TokenUnavailable(exc) from exc

    async def _replacement(self, refused: str) -> str:
        async with self._forcing:
            if refused in self._replaced:
                return await self._current_token(False)
            self.forced_refreshes += 1
            fresh = await self._current_token(True)
            self._replaced.add(refused)
            return fresh


@dataclass(frozen=True, slots=True)
class _Request:
    """One GET as it is sent again on a retry."""

    url: str
    params: Mapping[str, str] | None
    resource_type: str
    held: list[Reservation] | None
    accept: str
    cap_for: Callable[[str], int] | None


def _read_timeout(timeout: aiohttp.ClientTimeout) -> float:
    """The longest one request may take under ``timeout``: its read timeout, else its total."""
    for seconds in (timeout.sock_read, timeout.total):
        if seconds is not None:
            return float(seconds)
    return 0.0
