"""A repeating failure logged twice: once when it starts and once when it ends, with a count.

The tick runs every few seconds; a database that is down for an hour would otherwise write a
traceback 720 times. The traceback of each failure is still there at DEBUG.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import structlog

from syncsvc.db.probe import explain_database_error
from syncsvc.http import describe_network_error
from syncsvc.logging import redact_text


def describe_failure(exc: BaseException, database_url: str) -> str:
    """One line on what went wrong: a database or network failure in words, else its type."""
    words = explain_database_error(exc, database_url)
    if words is not None:
        return f"database: {words}"
    if isinstance(exc, aiohttp.ClientError):
        return describe_network_error(exc)
    text = redact_text(str(exc))[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class FailureStreak:
    """Tracks one repeating piece of work; logs at the first failure and at the recovery."""

    def __init__(
        self, log: structlog.stdlib.BoundLogger, what: str, database_url: str, **context: Any
    ) -> None:
        self._log = log
        self._what = what
        self._database_url = database_url
        self._context = context
        self.failures = 0

    def failed(self, exc: BaseException) -> None:
        """Count a failure; the first of a streak is logged as an error."""
        self.failures += 1
        self._log.debug(f"{self._what} failed", attempt=self.failures, exc_info=exc)
        if self.failures == 1:
            self._log.error(
                f"{self._what} failing",
                problem=describe_failure(exc, self._database_url),
                **self._context,
            )

    def succeeded(self) -> None:
        """End a streak, if one is running, with one line saying how many attempts failed."""
        if self.failures:
            self._log.warning(
                f"{self._what} recovered", failed_attempts=self.failures, **self._context
            )
            self.failures = 0
