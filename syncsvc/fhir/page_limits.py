"""How big one EHR page may be, and how many page bytes one process holds at once.

A hostile or broken EHR can answer a search with a page of any size. Each page is therefore
capped in bytes (checked against ``Content-Length`` before reading, and again while reading, so
no more than the cap is ever buffered) and in entries (checked when it is parsed, in this process
or in a page-decoding process). Caps alone do not bound memory: many pulls at once would each hold
a capped page. :class:`PageBudget` is the process-wide allowance of page bytes between the first
byte read and the decoded page: a page reserves its bytes before its body is read and gives them
back once it is decoded.

A page over a cap is :class:`PageTooLarge`: that resource type fails with the reason
``page_too_large``; the connection, the run's other types and the process carry on.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

from syncsvc.errors import SyncsvcError

MIB = 1024 * 1024
#: Default cap on one page's body: a page of 100 to 1,000 resources is well under 2 MiB.
DEFAULT_MAX_PAGE_BYTES = 16 * MIB
#: Default cap on one page's entries (vendors page at 1,000 at most).
DEFAULT_MAX_PAGE_ENTRIES = 10_000
#: Default process-wide budget of page bytes being read or decoded at once.
DEFAULT_PAGE_BUDGET_BYTES = 64 * MIB


class PageTooLarge(SyncsvcError):
    """A page went over the size or entry cap; the type it belongs to fails."""

    default_reason = "page_too_large"

    def __init__(self, what: str, limit: int) -> None:
        super().__init__(
            f"The EHR sent a page with more than {limit:,} {what} (this tenant's limit); "
            "the page was refused and this type was not synced.",
        )
        self.what = what
        self.limit = limit

    def __reduce__(self) -> tuple[type[PageTooLarge], tuple[str, int]]:
        # Raised in page-decoding processes and pickled back to the parent.
        return (PageTooLarge, (self.what, self.limit))


@dataclass(frozen=True)
class PageLimits:
    """The caps on one page of one tenant's searches."""

    max_bytes: int = DEFAULT_MAX_PAGE_BYTES
    max_entries: int = DEFAULT_MAX_PAGE_ENTRIES

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_entries < 1:
            raise ValueError("page limits must be positive")


@dataclass(eq=False)
class PageBudget:
    """A process-wide allowance of page bytes in flight, shared by every pull of the process.

    Reservations are all-or-nothing and first come, first served: a page waits for its whole
    reservation while holding nothing, so pages cannot deadlock each other holding parts of the
    budget, and a big page is not starved by a stream of small ones.
    """

    limit: int = DEFAULT_PAGE_BUDGET_BYTES
    #: Bytes reserved now, the most ever reserved at once, and reservations that had to wait.
    in_flight: int = field(default=0, init=False)
    peak: int = field(default=0, init=False)
    waits: int = field(default=0, init=False)
    _waiters: collections.deque[tuple[int, asyncio.Future[None]]] = field(
        default_factory=collections.deque, init=False, repr=False
    )

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError("a page budget must be positive")

    async def reserve(self, size: int) -> Reservation:
        """Reserve ``size`` bytes (at most the whole budget), waiting until they are free."""
        size = max(0, min(size, self.limit))
        if not self._waiters and self.in_flight + size <= self.limit:
            self._take(size)
            return Reservation(self, size)
        self.waits += 1
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        except BaseException:
            if entry in self._waiters:
                self._waiters.remove(entry)
            elif waiter.done() and not waiter.cancelled():
                self._give_back(size)  # granted just as it was cancelled
            self._wake()
            raise
        return Reservation(self, size)

    def _take(self, size: int) -> None:
        self.in_flight += size
        self.peak = max(self.peak, self.in_flight)

    def _give_back(self, size: int) -> None:
        self.in_flight -= size
        self._wake()

    def _wake(self) -> None:
        # In order: the first waiter that does not fit holds the line.
        while self._waiters:
            size, waiter = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                continue
            if self.in_flight + size > self.limit:
                return
            self._waiters.popleft()
            self._take(size)
            waiter.set_result(None)


class Reservation:
    """Bytes of a :class:`PageBudget` held by one page; give back what is not needed."""

    def __init__(self, budget: PageBudget, size: int) -> None:
        self._budget = budget
        self.size = size

    def shrink(self, size: int) -> None:
        """Keep only ``size`` bytes (the page turned out smaller than reserved)."""
        if 0 <= size < self.size:
            spare, self.size = self.size - size, size
            self._budget._give_back(spare)

    def release(self) -> None:
        """Give every byte back (idempotent)."""
        self.shrink(0)
