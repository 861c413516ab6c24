"""The chart of a recorded run (``ftwatch replay --plot``): the process's memory and each category
over the run, as text (plotext), sized to the terminal.

It lives with the dashboard, not with the headless views, because it draws in the dashboard's
palette, and the dashboard already imports the headless views (the other way would be a circle).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ftwatch.common.safe_text import safe
from ftwatch.runlog.events import CATEGORIES
from ftwatch.runlog.state import RunState
from ftwatch.views.headless.replay_report import LogUnreadable, load_state, no_events_message

#: ``--plot`` size when the output is not a terminal (and COLUMNS/LINES are not set).
PLOT_DEFAULT_SIZE = (100, 30)
PLOT_MAX_HEIGHT = 30
UNITS = (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("B", 1))


def plot_size(out: Any) -> tuple[int, int]:
    """Width and height of the chart: the terminal's (COLUMNS/LINES win), else a default."""
    columns, lines = shutil.get_terminal_size(PLOT_DEFAULT_SIZE)
    if not _isatty(out) and "COLUMNS" not in os.environ:
        columns = PLOT_DEFAULT_SIZE[0]
    if not _isatty(out) and "LINES" not in os.environ:
        lines = PLOT_DEFAULT_SIZE[1]
    return max(columns, 40), max(min(lines - 2, PLOT_MAX_HEIGHT), 12)


def _isatty(out: Any) -> bool:
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError):
        return False


def print_plot(path: Path, out: Any) -> int:
    """Print a chart of the process's memory and each category over the run."""
    state, decoder = load_state(path)
    if decoder.stats.events == 0:
        raise LogUnreadable(no_events_message(decoder.stats))
    width, height = plot_size(out)
    colour = _isatty(out) and not os.environ.get("NO_COLOR")
    out.write(plot_text(state, width, height, colour) + "\n")
    return 0


def plot_lines(state: RunState) -> tuple[list[float], dict[str, list[int]]]:
    """Seconds since the start, and bytes per line: ``process`` then each category that is ever
    above zero (``free`` left out), from the state's bounded timeline (peaks survive)."""
    points = state.timeline.all_points()
    t0 = state.first_t if state.first_t is not None else (points[0].t if points else 0.0)
    xs = [p.t - t0 for p in points]
    lines: dict[str, list[int]] = {"process": [p.used for p in points]}
    for name in CATEGORIES:
        if name != "free" and any(p.categories.get(name) for p in points):
            lines[name] = [int(p.categories.get(name) or 0) for p in points]
    return xs, lines


def plot_text(state: RunState, width: int, height: int, colour: bool) -> str:
    """The chart as text, ``width`` x ``height`` cells (ANSI colours only when ``colour``)."""
    import plotext as plt

    from ftwatch.views.dashboard.palette import LOOKS

    xs, lines = plot_lines(state)
    if len(xs) < 2:
        return f"ftwatch replay: only {len(xs)} memory samples in this log: nothing to draw"
    span = max(xs[-1], 1e-9)
    x_div, x_unit = (1.0, "s") if span < 180 else ((60.0, "min") if span < 3 * 3600 else (3600.0, "h"))
    top = max(max(values) for values in lines.values())
    y_unit, y_div = next(((n, d) for n, d in UNITS if top >= d), UNITS[-1])
    markers = iter(("•", "x", "+", "o", "*", "#", "=", ":", "~", "%", "@"))
    plt.clear_figure()
    plt.limitsize(False, False)  # our size, not plotext's guess of the terminal's
    plt.plotsize(width, height)
    plt.theme("pro" if colour else "clear")
    for name, values in lines.items():
        look = LOOKS.get(name)
        label = "process" if look is None else look.label
        rgb = _rgb(look.colour) if look is not None else (228, 228, 228)
        plt.plot([x / x_div for x in xs], [v / y_div for v in values], label=label,
                 marker="hd" if colour else next(markers, "."), color=rgb if colour else "default")
    status = state.exit["status"] if state.exit else "no exit event"
    name = safe(str(state.header.get("name") or "run"), one_line=True)
    plt.title(f"{name}: memory over the run ({safe(str(status), one_line=True)}, {state.step} steps)")
    plt.xlabel(f"time ({x_unit})")
    plt.ylabel(y_unit)
    text = plt.build()
    return text if colour else plt.uncolorize(text)


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    value = hex_colour.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)
