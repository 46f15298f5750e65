"""The small outcome chart on the tenant health page, as plain SVG geometry (no scripts).

Each hour is one stacked bar: successful runs at the bottom, then partial runs, then failed ones
(transient, reauth, misbound, error), then runs still going. The template draws the rectangles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from syncsvc.health.figures import OutcomeBucket

#: Stack order, bottom first: (group, CSS class, outcomes in the group).
GROUPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("ok", "bar-ok", ("ok",)),
    ("partial", "bar-partial", ("partial",)),
    ("failed", "bar-failed", ("transient", "reauth", "misbound", "error")),
    ("running", "bar-running", ("running",)),
)
WIDTH = 480
HEIGHT = 100
AXIS = 14  # room under the bars for hour labels
GAP = 2


@dataclass(frozen=True)
class Bar:
    """One rectangle of the chart, with the tooltip text of its hour and group."""

    x: float
    y: float
    width: float
    height: float
    css_class: str
    title: str


@dataclass(frozen=True)
class Label:
    """An hour label under the bars."""

    x: float
    text: str


@dataclass(frozen=True)
class Chart:
    """Everything the template needs to draw the chart."""

    width: int
    height: int
    bars: tuple[Bar, ...]
    labels: tuple[Label, ...]
    peak: int
    runs: int


def outcome_chart(buckets: Sequence[OutcomeBucket]) -> Chart:
    """The chart of ``buckets`` (oldest first), scaled to the busiest hour."""
    peak = max((b.total for b in buckets), default=0)
    plot = HEIGHT - AXIS
    slot = WIDTH / max(1, len(buckets))
    bars: list[Bar] = []
    labels: list[Label] = []
    for index, bucket in enumerate(buckets):
        x = index * slot
        base = float(plot)
        hour = bucket.start.strftime("%H:00")
        for group, css_class, outcomes in GROUPS:
            n = sum(bucket.outcomes.get(o, 0) for o in outcomes)
            if n == 0 or peak == 0:
                continue
            height = plot * n / peak
            base -= height
            bars.append(
                Bar(
                    round(x + GAP / 2, 1),
                    round(base, 1),
                    round(slot - GAP, 1),
                    round(height, 1),
                    css_class,
                    f"{hour} UTC: {n} {group}",
                )
            )
        if index % 6 == 0:
            labels.append(Label(round(x + GAP / 2, 1), hour))
    return Chart(WIDTH, HEIGHT, tuple(bars), tuple(labels), peak, sum(b.total for b in buckets))
