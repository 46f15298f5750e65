"""When a grant is next refreshed: the scheduling rule, pure, and its configured parameters.

A grant is refreshed for two reasons only. A sync needs a live access token: the refresh that
gives it one is due when the sync is, and only when the access token will not outlive the
sync's start by ``margin`` (a 570-second Cerner token is refreshed once before each sync, not
all day long). And the refresh token itself must stay alive: before the expiry the EHR gave it
(Epic's rolling tokens), and at least every ``keepalive`` (Cerner revokes offline access unused
for about three months). Whatever this rule says, a sync never starts on a token that runs short:
:class:`~syncsvc.sync.token_source.TokenSource` refreshes first. The rule decides *when* the
scheduler asks, so that ``next_refresh_at`` says when the next refresh will happen (health's
refresh horizon reads it) and the EHR sees no refresh nobody needs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from syncsvc.settings import Settings

#: A refresh token with a known expiry is renewed once this share of its life has passed, which
#: leaves the rest for retries after transient failures.
REFRESH_TOKEN_LIFE_USED = 0.75


@dataclass(frozen=True)
class RefreshSchedule:
    """The scheduling rule's parameters, from :class:`~syncsvc.settings.Settings`."""

    margin: dt.timedelta
    min_interval: dt.timedelta
    keepalive: dt.timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> RefreshSchedule:
        """The schedule configured for this process."""
        return cls(
            margin=dt.timedelta(seconds=settings.refresh_margin_seconds),
            min_interval=dt.timedelta(seconds=settings.min_refresh_interval_seconds),
            keepalive=dt.timedelta(days=settings.keepalive_days),
        )


def next_refresh_at(
    schedule: RefreshSchedule,
    *,
    now: dt.datetime,
    access_expires_at: dt.datetime | None,
    last_refresh_at: dt.datetime | None,
    next_sync_at: dt.datetime | None,
    connected_at: dt.datetime | None = None,
    has_refresh_token: bool = True,
    refresh_expires_at: dt.datetime | None = None,
) -> dt.datetime:
    """When a grant should next be refreshed (the scheduling rule; pure).

    The soonest of: the next sync (``next_sync_at``), when the access token will not live
    ``margin`` past it; ``keepalive`` after the grant was last exercised (last refresh, else the
    launch); and, for a refresh token that expires, once :data:`REFRESH_TOKEN_LIFE_USED` of its
    life since then has passed (but ``margin`` before its expiry at the latest). An unknown
    access-token expiry is due now. Never sooner than ``min_interval`` after the last refresh:
    Cerner answers faster refreshes of one grant with 429. A grant without a refresh token cannot
    be refreshed; its next look is when the access token expires (it then needs the patient).
    """
    if not has_refresh_token:
        return access_expires_at or now
    anchor = last_refresh_at or connected_at or now
    due = anchor + schedule.keepalive
    if refresh_expires_at is not None:
        life_used = anchor + (refresh_expires_at - anchor) * REFRESH_TOKEN_LIFE_USED
        due = min(due, life_used, refresh_expires_at - schedule.margin)
    if access_expires_at is None:
        due = min(due, now)
    elif next_sync_at is not None and access_expires_at - schedule.margin <= max(next_sync_at, now):
        # An overdue sync runs now at the soonest: its token must live from now on.
        due = min(due, next_sync_at)
    if last_refresh_at is not None:
        due = max(due, last_refresh_at + schedule.min_interval)
    return due
