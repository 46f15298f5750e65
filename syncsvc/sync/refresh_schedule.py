"""When a grant is next refreshed: the scheduling rule, pure, and its configured parameters."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from syncsvc.settings import Settings


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
    connected_at: dt.datetime | None = None,
    has_refresh_token: bool = True,
) -> dt.datetime:
    """When a grant should next be refreshed (the scheduling rule; pure).

    ``margin`` before the access token expires, and at least every ``keepalive`` since the grant
    was last exercised (last refresh, else the launch): Cerner revokes offline access unused for
    about three months. Never sooner than ``min_interval`` after the last refresh: Cerner answers
    faster refreshes of one grant with 429. A grant without a refresh token cannot be refreshed;
    its next look is when the access token expires (the connection then needs the patient).
    """
    if not has_refresh_token:
        return access_expires_at or now
    ahead = access_expires_at - schedule.margin if access_expires_at is not None else now
    anchor = last_refresh_at or connected_at or now
    due = min(ahead, anchor + schedule.keepalive)
    if last_refresh_at is not None:
        due = max(due, last_refresh_at + schedule.min_interval)
    return due
