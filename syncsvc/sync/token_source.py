"""A valid access token for one connection: the one way any caller gets one.

:class:`TokenSource` answers "give me an access token of this connection that lives a little
longer" (``margin_seconds``, 60 s by default: a 570-second Cerner token can expire mid-pull).
While the token it last handed out lives that long it answers from memory; otherwise it reads
the stored tokens fresh and, when they run short, refreshes under the connection's lease through
:func:`syncsvc.sync.refresh.refresh_connection`, which is single-flight across processes, checks
the response against the connection's binding (patient, tenant), merges new over old and commits
a rotated token before anyone is given the new access token.

Within one process the callers of a run (its resource types, asking at the same time) share one
load: one caller loads while the others wait for what it loaded, because the same refresh token
sent twice at once can cost a strict-rotation grant its life. ``force`` (after the EHR answered
401 ``invalid_token``) replaces the token even when it looks valid; callers forced at once by
the same refusal share one replacement.

Failures come out on the two axes of :mod:`syncsvc.errors`: :class:`~syncsvc.errors.Misbound`
and :class:`~syncsvc.errors.ReauthRequired` (stop), :class:`~syncsvc.errors.Transient` (back
off; ``reason`` says ``lost_lease``, or ``backing_off`` when our own back-off or minimum refresh
interval withheld the refresh without asking the EHR).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

from syncsvc.errors import Misbound, ReauthRequired, Transient

from .context import SyncContext
from .credentials import StoredTokens, load_tokens
from .refresh import refresh_connection
from .refresh_outcomes import DEFAULT_REAUTH_MESSAGE, RefreshResult

#: How long a handed-out access token must still live, by default.
DEFAULT_MARGIN_SECONDS = 60.0


class TokenSource:
    """Access tokens of one connection, refreshed single-flight under its lease when short.

    ``lease_check`` runs before every token is handed out and raises to stop the caller (a run
    whose lease was lost must stop at its next request rather than race the process that took
    the connection over); ``on_refresh`` hears every refresh this source attempted (the run
    record lists them).
    """

    def __init__(
        self,
        ctx: SyncContext,
        connection_id: str,
        *,
        margin_seconds: float = DEFAULT_MARGIN_SECONDS,
        clock: Callable[[], dt.datetime] | None = None,
        lease_check: Callable[[], None] | None = None,
        on_refresh: Callable[[RefreshResult], None] | None = None,
        known: StoredTokens | None = None,
    ) -> None:
        self._ctx = ctx
        self.connection_id = connection_id
        self._margin = margin_seconds
        self._clock = clock if clock is not None else ctx.now
        self._lease_check = lease_check
        self._on_refresh = on_refresh
        #: ``known``: tokens the caller has just read or stored (a refresh right before the
        #: pull); used while they live long enough, saving a load.
        self._tokens: StoredTokens | None = known
        self._loading = asyncio.Lock()
        #: How often the stored tokens were loaded (the other calls were answered from memory).
        self.loads = 0

    async def __call__(self, force: bool = False) -> str:
        """An access token living ``margin_seconds`` more; a replacement when ``force``."""
        if self._lease_check is not None:
            self._lease_check()
        seen = self._tokens
        if force or seen is None or not seen.access_valid(self._clock(), self._margin):
            async with self._loading:
                tokens = self._tokens
                if tokens is seen or tokens is None:
                    self.loads += 1
                    tokens = self._tokens = await self.tokens(force)
                # Otherwise another caller loaded while this one waited: the freshest there is
                # (a forced caller's refused token is the one that caller replaced).
        else:
            tokens = seen
        if tokens.access_token is None:
            raise Transient("No access token is available.")
        return tokens.access_token

    async def tokens(self, force: bool = False) -> StoredTokens:
        """The stored tokens read fresh, refreshed first when short of the margin or ``force``.

        A grant that cannot be refreshed yet (no offline access, or refreshed moments ago)
        gives its access token while it is still valid at all.
        """
        if not force:
            async with self._ctx.sessionmaker() as session:
                tokens = await load_tokens(session, self._ctx.vault, self.connection_id)
            if tokens is not None and tokens.access_valid(self._clock(), self._margin):
                return tokens
        # ``force`` comes after the EHR refused the access token: a grant without a refresh
        # token then has nothing left, and ends as offline_access_not_granted, not as a refusal.
        result = await refresh_connection(self._ctx, self.connection_id, force=True, refused=force)
        if self._on_refresh is not None:
            self._on_refresh(result)
        return self._usable(result)

    def _usable(self, result: RefreshResult) -> StoredTokens:
        """The tokens a refresh left, if their access token is valid; else why there are none."""
        if (
            result.outcome in ("refreshed", "not_due")
            and result.tokens is not None
            and result.tokens.access_valid(self._clock())
        ):
            return result.tokens
        if result.outcome == "misbound":
            raise Misbound(result.message or "The grant is misbound.", reason=result.reason)
        if result.outcome == "needs_reauth":
            raise ReauthRequired(
                result.message or DEFAULT_REAUTH_MESSAGE,
                reason=result.reason,
                error_uri=result.error_uri,
            )
        retry_after = (
            max((result.retry_at - self._clock()).total_seconds(), 0.0)
            if result.retry_at is not None
            else None
        )
        reason: str | None = None
        if result.outcome == "lost_lease":
            reason = "lost_lease"
        elif result.outcome == "transient" and result.reason is None:
            # Our own back-off (or minimum interval) withheld the refresh: no EHR failure.
            reason = "backing_off"
        raise Transient(
            result.message or "No valid access token is available yet.",
            reason=reason,
            retry_after=retry_after,
        )
