"""Measuring one timed block: wall time, CPU seconds, peak RSS; and summarising rounds."""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_PROC = Path("/proc")


def _proc(pid: int | None) -> Path:
    return _PROC / ("self" if pid is None else str(pid))


def _status_kib(name: str, pid: int | None = None) -> int | None:
    try:
        for line in (_proc(pid) / "status").read_text(encoding="ascii").splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mib(pid: int | None = None) -> float:
    """Current resident set size of this process (or ``pid``) in MiB."""
    kib = _status_kib("VmRSS", pid)
    if kib is None:
        # Not Linux: the lifetime peak is the best there is.
        return peak_rss_mib() if pid is None else 0.0
    return kib / 1024


def peak_rss_mib(pid: int | None = None) -> float:
    """Peak RSS of this process (or ``pid``) in MiB since the last :func:`reset_peak_rss`."""
    kib = _status_kib("VmHWM", pid)
    if kib is not None:
        return kib / 1024
    if pid is not None:
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def reset_peak_rss(pid: int | None = None) -> None:
    """Start a new peak (Linux: ``clear_refs`` 5 resets VmHWM; elsewhere it stays lifetime)."""
    with contextlib.suppress(OSError):
        (_proc(pid) / "clear_refs").write_text("5", encoding="ascii")


def _stat_fields(process: Path) -> list[str] | None:
    """The fields of a process's ``stat`` after its command name (which may hold spaces)."""
    try:
        stat = (process / "stat").read_text(encoding="ascii")
    except OSError:  # gone meanwhile, or not Linux
        return None
    return stat[stat.rindex(")") + 2 :].split()


def children_of(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux; empty elsewhere)."""
    found = []
    for entry in _PROC.glob("[0-9]*"):
        fields = _stat_fields(entry)
        if fields is not None and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _cpu_of(entry: Path) -> float:
    fields = _stat_fields(entry)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user and system) process ``pid`` has used; 0 when it cannot be read."""
    return _cpu_of(_proc(pid))


def thread_cpu_seconds(tid: int) -> float:
    """CPU seconds one thread of this process has used (Linux); 0 when it cannot be read."""
    return _cpu_of(_PROC / "self" / "task" / str(tid))


@dataclass
class Sample:
    """One timed block."""

    seconds: float = 0.0
    cpu_seconds: float = 0.0
    items: int = 0
    rss_before_mib: float = 0.0
    peak_rss_mib: float = 0.0

    @property
    def rate(self) -> float:
        """Items per second."""
        return self.items / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_per_10k(self) -> float:
        """CPU seconds per 10,000 items."""
        return self.cpu_seconds * 10_000 / self.items if self.items else 0.0

    @property
    def peak_growth_mib(self) -> float:
        """How far the peak RSS rose above the RSS at the start."""
        return max(self.peak_rss_mib - self.rss_before_mib, 0.0)


@contextlib.contextmanager
def timed(helpers: Sequence[int] = ()) -> Iterator[Sample]:
    """Time a block; the caller sets ``items`` on the yielded sample.

    ``helpers`` are process ids of this process's workers (page decoders): their CPU counts,
    and their peak RSS growth is added to this process's (an upper bound: peaks need not meet).
    """
    sample = Sample(rss_before_mib=rss_mib() + sum(rss_mib(pid) for pid in helpers))
    reset_peak_rss()
    for pid in helpers:
        reset_peak_rss(pid)
    helper_cpu = sum(cpu_seconds(pid) for pid in helpers)
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield sample
    finally:
        sample.seconds = time.perf_counter() - wall
        sample.cpu_seconds = time.process_time() - cpu
        sample.cpu_seconds += sum(cpu_seconds(pid) for pid in helpers) - helper_cpu
        sample.peak_rss_mib = peak_rss_mib() + sum(peak_rss_mib(pid) for pid in helpers)


@dataclass
class Spread:
    """Median, min and max of a figure over rounds."""

    median: float
    low: float
    high: float
    values: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """The spread of ``values`` (at least one)."""
        return cls(statistics.median(values), min(values), max(values), list(values))

    def to_json(self) -> dict[str, Any]:
        """The spread as JSON."""
        return {
            "median": round(self.median, 3),
            "min": round(self.low, 3),
            "max": round(self.high, 3),
            "values": [round(v, 3) for v in self.values],
        }


@dataclass(frozen=True)
class LoggedRequests:
    """A fleet's requests in a stretch of the sandbox's log.

    The requests in flight are read there, after the work, not sampled in this process while it
    works: a sampler's wake-ups would count as the measured service's CPU.
    """

    count: int
    #: The most the sandbox was serving at once (each request in flight is being served).
    peak_in_flight: int
