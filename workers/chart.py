"""The digest's chart: finished outcomes (bars) and cost per finished outcome (line) by week.

Drawn with matplotlib's Agg backend on a Figure of its own (no pyplot state), so it is safe in a
worker thread and needs no display.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

from workers.store.reporting.metrics import WeekPoint

if TYPE_CHECKING:
    from matplotlib.figure import Figure

WIDTH_IN, HEIGHT_IN, DPI = 8.0, 3.6, 110


def draw_chart(series: Sequence[WeekPoint], title: str = "") -> Figure:
    """The chart as a matplotlib Figure: each week labelled with its year ("2026-W47", since
    eight weeks can span a new year), each bar with its count, each cost point with its value."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    FigureCanvasAgg(figure)
    outcomes = figure.add_subplot(1, 1, 1)
    labels = [p.week for p in series]
    positions = list(range(len(series)))
    finished = [p.finished_outcomes for p in series]
    bars = outcomes.bar(positions, finished, color="#4a90d9", label="finished outcomes")
    outcomes.bar_label(bars, fontsize="small")
    outcomes.set_ylabel("finished outcomes")
    outcomes.set_xticks(positions, labels, fontsize="small")
    outcomes.set_ylim(0, max([*finished, 1]) * 1.25)
    outcomes.spines[["top"]].set_visible(False)

    cost = figure.add_subplot(1, 1, 1, sharex=outcomes, frame_on=False)
    cost.yaxis.tick_right()
    cost.yaxis.set_label_position("right")
    cost.tick_params(bottom=False, labelbottom=False)
    values = [p.cost_per_finished_outcome_micro_usd for p in series]
    points = [(x, v / 1_000_000) for x, v in zip(positions, values, strict=True) if v is not None]
    if points:
        xs, ys = zip(*points, strict=True)
        cost.plot(xs, ys, color="#d9534f", marker="o", label="cost per finished outcome")
        for x, y in points:
            cost.annotate(
                f"${y:,.2f}",
                (x, y),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize="x-small",
                color="#d9534f",
            )
        cost.set_ylim(0, max(ys) * 1.25 or 1)
    else:
        cost.set_ylim(0, 1)
    cost.set_ylabel("USD per finished outcome")
    cost.yaxis.set_major_formatter("${x:,.2f}")
    handles = outcomes.get_legend_handles_labels()[0] + cost.get_legend_handles_labels()[0]
    outcomes.legend(handles=handles, loc="upper left", frameon=False, fontsize="small")
    if title:
        outcomes.set_title(title, fontsize="medium")
    figure.tight_layout()
    return figure


def render_chart(series: Sequence[WeekPoint], title: str = "") -> bytes:
    """PNG bytes for `series` (oldest week first); weeks with nothing finished have no cost point."""
    buffer = io.BytesIO()
    draw_chart(series, title).savefig(buffer, format="png")
    return buffer.getvalue()
