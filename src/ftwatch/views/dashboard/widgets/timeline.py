"""The memory timeline: what the process holds and its main categories over the whole run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rich.style import Style
from rich.text import Text
from textual.app import RenderResult
from textual_plotext import PlotextPlot

from ftwatch.runlog.events import CATEGORIES
from ftwatch.runlog.state import PhaseRecord, TimelinePoint
from ftwatch.views.dashboard import fmt
from ftwatch.views.dashboard.palette import DANGER, DIM, LOOKS, WATCH
from ftwatch.views.dashboard.widgets.lines import ChangedLines

USED_COLOUR = "#e4e4e4"
TENSORS_COLOUR = "#5faf5f"
#: Categories that may get a line of their own (the ones a process can grow).
LINE_CANDIDATES = ("weights", "activations", "optimizer", "grads", "lora", "other", "cache", "non_torch")
MAX_CATEGORY_LINES = 3
OFF_SCALE_BELOW = 0.25
UNITS = (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


def _colour(name: str) -> str:
    if name in LOOKS:
        return LOOKS[name].colour
    return TENSORS_COLOUR if name == "tensors" else USED_COLOUR


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    value = hex_colour.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


@dataclass
class Series:
    """The timeline ready to draw: x in the chosen time unit, y in the chosen byte unit."""

    x: list[float] = field(default_factory=list)
    lines: dict[str, list[float]] = field(default_factory=dict)
    x_unit: str = "s"
    y_unit: str = "GiB"
    y_max: float = 1.0
    capacity: float | None = None
    limit: float | None = None
    limit_label: str = "limit"
    peak: tuple[float, float] | None = None
    phase_starts: list[float] = field(default_factory=list)
    off_scale: bool = False


def downsample(points: list[TimelinePoint], buckets: int) -> list[TimelinePoint]:
    """At most ``buckets`` points, each the largest-usage point of its bucket (peaks survive)."""
    if len(points) <= buckets or buckets <= 0:
        return points
    out = []
    size = len(points) / buckets
    for b in range(buckets):
        chunk = points[int(b * size):max(int((b + 1) * size), int(b * size) + 1)]
        out.append(max(chunk, key=lambda p: p.used))
    return out


def build_series(points: list[TimelinePoint], phases: list[PhaseRecord], capacity: int | None,
                 limit: int | None, is_cuda: bool, width: int, t0: float | None = None,
                 limit_label: str = "limit", tensors: bool = True) -> Series:
    """Turn timeline points into plot lines that fit ``width`` columns (two dots per column).

    ``tensors=False`` (a process watched from outside) leaves out the tensor line of a CPU run.
    """
    s = Series()
    if not points:
        return s
    pts = downsample(points, max(width * 2, 8))
    start = t0 if t0 is not None else pts[0].t
    span = max(pts[-1].t - start, 1e-9)
    x_div, s.x_unit = (1.0, "s") if span < 180 else ((60.0, "min") if span < 3 * 3600 else (3600.0, "h"))
    peak_used = max(p.used for p in pts)
    scale_max = max(peak_used, capacity or 0)
    s.off_scale = bool(capacity) and peak_used < OFF_SCALE_BELOW * (capacity or 0)
    top = peak_used if s.off_scale or not capacity else scale_max
    name, div = next(((n, d) for n, d in UNITS if top >= d), UNITS[-1])
    s.y_unit = name
    s.x = [(p.t - start) / x_div for p in pts]
    s.lines["used"] = [p.used / div for p in pts]
    peaks: dict[str, int] = {}
    for p in pts:
        for cat, value in p.categories.items():
            if cat in LINE_CANDIDATES and value:
                peaks[cat] = max(peaks.get(cat, 0), int(value))
    if is_cuda:
        chosen = sorted(peaks, key=lambda c: -peaks[c])[:MAX_CATEGORY_LINES]
        for cat in sorted(chosen, key=CATEGORIES.index):
            s.lines[cat] = [(p.categories.get(cat) or 0) / div for p in pts]
    elif tensors:
        s.lines["tensors"] = [sum(int(p.categories.get(c) or 0) for c in LINE_CANDIDATES[:5]) / div for p in pts]
    i_peak = max(range(len(pts)), key=lambda i: pts[i].used)
    s.peak = (s.x[i_peak], pts[i_peak].used / div)
    if s.off_scale:
        s.y_max = peak_used / div * 1.25
    else:
        s.y_max = max(scale_max / div * 1.02, 1e-9)
        s.capacity = capacity / div if capacity else None
    if limit and limit / div <= s.y_max:
        s.limit, s.limit_label = limit / div, limit_label
    s.phase_starts = [(p.start_t - start) / x_div for p in phases[1:] if p.start_t >= start]
    # Nothing is drawn outside the axes: plotext walks every cell between two points, so one value
    # far beyond them (a crafted log's 2**63 bytes, a time before the start) would stall the frame.
    x_max = span / x_div
    s.x = [min(max(x, 0.0), x_max) for x in s.x]
    for name, values in s.lines.items():
        s.lines[name] = [min(max(v, 0.0), s.y_max) for v in values]
    s.phase_starts = [x for x in s.phase_starts if x <= x_max]
    return s


def without_flat_interiors(x: list[float], y: list[float]) -> tuple[list[float], list[float]]:
    """The points of a line without those inside a run of equal values: the first and the last point
    of the run draw the same cells (plotext joins consecutive points with every cell between them),
    and each point left out is a segment plotext does not walk. Memory that holds still (the weights,
    the optimizer states between steps) is most of a chart's points."""
    if len(y) < 3:
        return x, y
    keep = [0, *(i for i in range(1, len(y) - 1) if not y[i - 1] == y[i] == y[i + 1]), len(y) - 1]
    if len(keep) == len(y):
        return x, y
    return [x[i] for i in keep], [y[i] for i in keep]


def nice_ticks(top: float, count: int = 4) -> list[float]:
    """Round tick values from 0 to about ``top`` (steps of 1, 2, 2.5 or 5 times a power of ten)."""
    if top <= 0:
        return [0.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    ticks, value = [], 0.0
    while value <= top * 1.0001:
        ticks.append(round(value, 10))
        value += step
    return ticks


def tick_label(value: float, unit: str = "") -> str:
    """A tick value without trailing zeros, with a one-letter unit (``75G``, ``500M``, ``30s``)."""
    return f"{value:.3g}{unit[:1]}" if value else "0"


PHASE_LINE_COLOUR = (108, 108, 108)
#: What the timeline's marks mean, for the legend (when it has room) and the help screen.
PHASE_MARK, PEAK_MARK = "│ phase", "▲ peak"


def legend_items(series: Series, capacity: int | None, mono: bool = False) -> tuple[list[Text], list[Text]]:
    """The legend's entries: those it must show (the lines, the limits, a capacity off the scale)
    and those it shows when there is room (the phase boundaries, the peak mark)."""
    must: list[Text] = []
    for name in series.lines:
        label = {"used": "process", "tensors": "tensors"}.get(name, LOOKS[name].label if name in LOOKS else name)
        must.append(Text.assemble(("━ " if not mono else "─ ", Style(color=_colour(name), bold=True)), label))
    if series.capacity is not None:
        must.append(Text("─ capacity", Style(color=DANGER)))
    if series.limit is not None:
        must.append(Text(f"─ {series.limit_label}", Style(color=WATCH)))
    if series.off_scale and capacity:
        must.append(Text(f"(capacity {fmt.size(capacity)} off scale)", Style(color=DIM)))
    extra: list[Text] = []
    if series.phase_starts:
        extra.append(Text(PHASE_MARK, Style(color="#6c6c6c")))
    if series.peak is not None:
        extra.append(Text(PEAK_MARK))
    return must, extra


def _wrap(items: list[Text], width: int, sep: str) -> list[Text]:
    """The items on as few lines of ``width`` cells as they take, never split."""
    lines = [Text(no_wrap=True, overflow="ellipsis")]
    for item in items:
        line = lines[-1]
        if line.cell_len and line.cell_len + len(sep) + item.cell_len > width:
            line = Text(no_wrap=True, overflow="ellipsis")
            lines.append(line)
        if line.cell_len:
            line.append(sep)
        line.append_text(item)
    return lines


def legend_text(series: Series, capacity: int | None, mono: bool = False, width: int = 10_000,
                max_lines: int = 2) -> Text:
    """The line (two when one cannot hold it) above the plot: what each line is, the limits drawn
    across it, and, when there is room, the phase boundaries and the peak mark. Never cut at
    ``width`` unless ``max_lines`` lines of the lines and limits alone do not fit."""
    must, extra = legend_items(series, capacity, mono)
    # The extras go before a note on the capacity (the longest entry, best on a line of its own).
    note = must[-1:] if series.off_scale and capacity else []
    both = must[:len(must) - len(note)] + extra + note
    width = max(width, 1)
    tries = [(both, "  ", 1), (must, "  ", 1), (must, " ", 1),
             (both, "  ", max_lines), (must, "  ", max_lines), (must, " ", max_lines)]
    lines: list[Text] = []
    for items, sep, most in tries:
        lines = _wrap(items, width, sep)
        if len(lines) <= most and all(line.cell_len <= width for line in lines):
            break
    lines = lines[:max_lines]
    return Text("\n", no_wrap=True, overflow="ellipsis").join(lines)


class TimelinePlot(ChangedLines, PlotextPlot):
    """A plotext chart of the timeline; redrawn only when :meth:`show` gets new data."""

    DEFAULT_CSS = """
    TimelinePlot { height: 1fr; width: 1fr; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id, classes=classes)
        self.series = Series()
        self.mono = False
        self.theme = "clear"

    def show(self, series: Series, mono: bool = False) -> None:
        """Draw ``series`` (the app throttles how often this is called); only the rows that changed
        are repainted."""
        self.series, self.mono = series, mono
        self.redraw()

    def _configure(self) -> None:
        plt = self.plt
        s = self.series
        plt.clear_figure()
        plt.theme("clear")
        plt.xaxes(True, False)
        plt.yaxes(True, False)
        marker = "hd"
        markers = iter(("•", "x", "+", "o", "*"))
        for name, ys in s.lines.items():
            colour = _colour(name)
            xs, ys = without_flat_interiors(s.x, ys)
            plt.plot(xs, ys, color=_rgb(colour), marker=next(markers, ".") if self.mono else marker)
        if s.capacity is not None:
            plt.hline(s.capacity, color=_rgb(DANGER))
        if s.limit is not None:
            plt.hline(s.limit, color=_rgb(WATCH))
        for x in s.phase_starts:
            plt.vline(x, color=PHASE_LINE_COLOUR)
        if s.peak is not None:
            plt.text("▲", s.peak[0], s.peak[1], color=_rgb(USED_COLOUR), alignment="center")
        plt.ylim(0, s.y_max)
        ticks = nice_ticks(s.y_max)
        plt.yticks(ticks, [tick_label(t, s.y_unit) for t in ticks])
        if s.x:
            x_max = max(s.x[-1], 1e-6)
            plt.xlim(0, x_max)
            x_ticks = [t for t in nice_ticks(x_max, max(self.size.width // 14, 2)) if t <= x_max]
            plt.xticks(x_ticks, [tick_label(t, s.x_unit) for t in x_ticks])

    def render(self) -> RenderResult:
        """The chart, or a quiet line while there are too few points."""
        if len(self.series.x) < 2 or self.size.height < 3:
            return Text("the timeline starts with the first samples…", style=DIM)
        self._configure()
        return super().render()
