"""The stacked memory bar, its zoomed tensor bar and its legend.

Every part that holds bytes gets at least one cell (so no category vanishes from a bar), and the
text on a bar keeps the figures first when it runs short of room: a segment too narrow for its
name and size shows the size, and the peak marker keeps its value.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.geometry import Size

from ftwatch.views.dashboard import fmt
from ftwatch.views.dashboard.breakdown import BarSegment, Breakdown, Part, layout_segments
from ftwatch.views.dashboard.palette import DANGER, DIM, LOOKS, TRACK, WATCH
from ftwatch.views.dashboard.widgets.lines import ChangedLines

PEAK_GLYPH = "▲"
LIMIT_GLYPH = "◆"
TRUE_PEAK_GLYPH = "△"


def _segment_label(part: Part, cells: int) -> str:
    """The text written inside a segment: name and size, else the size, else the name, else nothing."""
    look = LOOKS[part.name]
    size = ("≈" if part.estimated else "") + fmt.size(part.bytes)
    for text in (f" {look.label} {size} ", f"{look.label} {size}", f" {size} ", size, f" {look.label} "):
        if len(text) <= cells:
            return text
    return ""


def render_bar(parts: list[Part], scale: int, width: int, rows: int = 1, mono: bool = False,
               labels: bool = True) -> tuple[Text, list[BarSegment]]:
    """Draw ``parts`` on ``rows`` lines of ``width`` cells; the rest of the scale is an empty track.

    In colour each segment is a run of its category's background colour; with ``mono`` (NO_COLOR)
    it is a run of the category's glyph. Names (and sizes) are written inside segments wide
    enough for them, on the middle row.
    """
    segments = layout_segments([(p.name, p.bytes) for p in parts], scale, width, min_cell=True)
    by_name = {p.name: p for p in parts}
    label_row = rows // 2
    text = Text(no_wrap=True, overflow="crop")
    for row in range(rows):
        filled = 0
        for seg in segments:
            if seg.cells <= 0:
                continue
            look = LOOKS[seg.name]
            label = _segment_label(by_name[seg.name], seg.cells) if labels and row == label_row else ""
            fill = look.glyph if mono else " "
            body = label + fill * (seg.cells - len(label))
            if mono:
                text.append(body, Style(bold=bool(label)))
            else:
                text.append(body, Style(color=look.ink, bgcolor=look.colour))
            filled += seg.cells
        if filled < width:
            rest = width - filled
            text.append(TRACK.glyph * rest, Style(color=TRACK.ink) if mono else Style(color=TRACK.ink,
                                                                                          bgcolor=TRACK.colour))
        if row < rows - 1:
            text.append("\n")
    return text, segments


def _col(nbytes: int, scale: int, width: int) -> int:
    """The cell under which a marker for ``nbytes`` goes (the last cell the amount fills)."""
    boundary = (2 * nbytes * width + scale) // (2 * scale)
    return max(min(boundary - 1, width - 1), 0)


def render_markers(bd: Breakdown, width: int) -> Text:
    """The line under the bar: the peak so far and the budget or warning threshold.

    A marker's label sits beside its glyph when there is room; else it is written where there is
    room with the glyph as its key (``▲ peak 79.2 GiB``), so the peak never loses its value; only
    then is a short label tried. The peak is placed first. A threshold beyond the bar's scale is
    not drawn (the title states what the run is measured against). ``bd.scale_note`` (what the
    bar stands for) takes the left end when it is free.
    """
    scale = bd.drawn_scale
    if width <= 0 or scale <= 0:
        return Text("")
    line = [" "] * width
    styles: list[Style | None] = [None] * width
    marks: list[tuple[int, str, tuple[str, str], Style]] = []
    if bd.peak:
        marks.append((_col(bd.peak, scale, width), PEAK_GLYPH,
                      (f"{bd.peak_label} {fmt.size(bd.peak)}", bd.peak_label), Style(bold=True)))
    if bd.true_peak and bd.true_peak != bd.peak:  # CPU: the measured peak of live tensor bytes
        marks.append((_col(bd.true_peak, scale, width), TRUE_PEAK_GLYPH,
                      (f"true peak {fmt.size(bd.true_peak)}", "true peak"), Style(bold=True)))
    if bd.threshold and bd.threshold <= scale:
        crossed = bd.peak is not None and bd.peak >= bd.threshold
        marks.append((_col(bd.threshold, scale, width), LIMIT_GLYPH,
                      (f"{bd.threshold_label} {fmt.size(bd.threshold)}", bd.threshold_label),
                      Style(color=DANGER if crossed else WATCH)))
    taken = [False] * width

    def free(start: int, text: str) -> bool:
        stop = start + len(text)
        return start >= 0 and stop <= width and not any(taken[start:stop])

    def put(start: int, text: str, style: Style | None) -> None:
        for i, ch in enumerate(text, start):
            line[i], styles[i], taken[i] = ch, style, True

    def gap_free(start: int, text: str) -> bool:  # free, and so is the cell each side of it
        return free(start, text) and not any(taken[max(start - 1, 0):start + len(text) + 1])

    for col, glyph, _, style in marks:
        put(col, glyph, style)
    for col, glyph, (full, short), style in marks:
        keyed = f"{glyph} {full}"
        spots = [(col + 1, f" {full}", free), (col - len(full) - 1, f"{full} ", free),
                 *((start, keyed, gap_free) for start in range(width - len(keyed) + 1)),
                 (col + 1, f" {short}", free), (col - len(short) - 1, f"{short} ", free)]
        for start, text, fits in spots:
            if fits(start, text):
                put(start, text, style)
                break
    note = f"{bd.scale_note} " if bd.scale_note else ""
    if note and free(0, note):
        put(0, note, Style(color=DIM))
    out = Text(no_wrap=True, overflow="crop")
    start = 0
    for end in range(1, width + 1):  # one span per run of cells in the same style, not one per cell
        if end == width or styles[end] is not styles[start]:
            out.append("".join(line[start:end]), styles[start])
            start = end
    return out


class MemoryBar(ChangedLines):
    """The stacked bar of one device against its capacity, with the peak and limit markers below."""

    DEFAULT_CSS = """
    MemoryBar { height: auto; width: 1fr; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id, classes=classes)
        self.breakdown = Breakdown()
        self.rows = 1
        self.mono = False
        self._key: object = None

    def show(self, bd: Breakdown, rows: int = 1, mono: bool = False) -> None:
        """Draw ``bd`` (refreshes only when something visible changed)."""
        key = (tuple(bd.parts), bd.drawn_scale, bd.peak, bd.peak_label, bd.threshold, bd.scale_note,
               bd.true_peak, rows, mono)
        if key == self._key:
            return
        resized = rows != self.rows
        self.breakdown, self.rows, self.mono, self._key = bd, rows, mono, key
        self.redraw(layout=resized)

    @property
    def segments(self) -> list[BarSegment]:
        """The segments as laid out at the widget's current width."""
        return layout_segments([(p.name, p.bytes) for p in self.breakdown.parts], self.breakdown.drawn_scale,
                               self.content_size.width, min_cell=True)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        """The bar rows plus the marker line."""
        return self.rows + 1

    def render(self) -> Text:
        """The bar and the markers."""
        width = self.content_size.width
        bd = self.breakdown
        if bd.drawn_scale <= 0 or not bd.parts:
            return Text("waiting for the first memory reading…", style=DIM)
        bar, _ = render_bar(bd.parts, bd.drawn_scale, width, self.rows, self.mono)
        bar.append("\n")
        bar.append_text(render_markers(bd, width))
        return bar


class ZoomBar(ChangedLines):
    """The tensor categories alone, scaled to their total: readable when they are a sliver of the card."""

    DEFAULT_CSS = """
    ZoomBar { height: 1; width: 1fr; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id, classes=classes)
        self.breakdown = Breakdown()
        self.mono = False
        self._key: object = None

    def show(self, bd: Breakdown, mono: bool = False) -> None:
        """Draw the tensor parts of ``bd``."""
        key = (tuple(bd.tensor_parts), bd.true_peak, bd.true_peak_step, mono)
        if key != self._key:
            self.breakdown, self.mono, self._key = bd, mono, key
            self.redraw()

    def render(self) -> Text:
        """A caption and the zoomed bar (with a CPU true peak: its split, and at which step)."""
        bd = self.breakdown
        total = bd.tensor_total
        if bd.true_peak is not None:
            step = f" (step {bd.true_peak_step})" if bd.true_peak_step is not None else ""
            caption = Text(f"true peak {fmt.size(bd.true_peak)}{step} ", style=DIM, no_wrap=True)
        else:
            caption = Text(f"tensors {fmt.size(total)} ", style=DIM, no_wrap=True)
        width = max(self.content_size.width - len(caption), 0)
        bar, _ = render_bar(bd.tensor_parts, total, width, 1, self.mono)
        return caption + bar


def legend_entries(bd: Breakdown, peaks: dict[str, int], with_share: bool, with_peak: bool,
                   mono: bool) -> list[Text]:
    """One entry per part: swatch, name, size, share of the bar (of the process on a CPU run), and
    the peak so far."""
    label_w = max((len(LOOKS[p.name].label) for p in bd.parts), default=0)
    entries = []
    for part in bd.parts:
        look = LOOKS[part.name]
        entry = Text(no_wrap=True)
        if mono:
            entry.append(look.glyph * 2)
        else:
            entry.append("  ", Style(bgcolor=look.colour))
        entry.append(f" {look.label:<{label_w}} ")
        approx = "≈" if part.estimated else " "
        entry.append(f"{approx}{fmt.size(part.bytes):>8}", Style(bold=True))
        if with_share:
            entry.append(f" {fmt.share(bd.bar_share(part.bytes)):>4}", Style(color=DIM))
        if with_peak:  # the peak of what is free says nothing: left blank
            peak = peaks.get(part.name) if part.name != "free" else None
            entry.append(f"  peak {fmt.size(peak):>8}" if peak is not None else " " * 15, Style(color=DIM))
        entries.append(entry)
    return entries


def layout_legend(entries: list[Text], width: int, gap: int = 3) -> list[Text]:
    """Arrange entries in as many equal columns as fit, row by row (the bar's order, left to right)."""
    if not entries:
        return []
    cell = max(e.cell_len for e in entries) + gap
    columns = max(min((width + gap) // cell, len(entries)), 1)
    lines = []
    for start in range(0, len(entries), columns):
        line = Text(no_wrap=True, overflow="crop")
        for i, entry in enumerate(entries[start:start + columns]):
            if i:
                line.append(" " * gap)
            line.append_text(entry)
            line.append(" " * (cell - gap - entry.cell_len))
        lines.append(line)
    return lines


class Legend(ChangedLines):
    """Each category's colour, size and share, in as many columns as the width allows."""

    DEFAULT_CSS = """
    Legend { height: auto; width: 1fr; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id, classes=classes)
        self.breakdown = Breakdown()
        self.peaks: dict[str, int] = {}
        self.mono = False
        self.max_rows = 4
        self._key: object = None

    def show(self, bd: Breakdown, peaks: dict[str, int], mono: bool = False, max_rows: int = 4) -> None:
        """List the parts of ``bd`` with their peaks."""
        key = (tuple(bd.parts), bd.scale, tuple(sorted(peaks.items())), mono, max_rows)
        if key == self._key:
            return
        old_count = len(self.breakdown.parts)
        self.breakdown, self.peaks, self.mono, self.max_rows, self._key = bd, peaks, mono, max_rows, key
        self.redraw(layout=old_count != len(bd.parts))

    def _lines(self, width: int) -> list[Text]:
        lines: list[Text] = []
        for with_share, with_peak in ((True, True), (True, False), (False, False)):
            entries = legend_entries(self.breakdown, self.peaks, with_share, with_peak, self.mono)
            lines = layout_legend(entries, width)
            if len(lines) <= self.max_rows:
                return lines
        return lines

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        """As many rows as the entries need at this width."""
        return max(len(self._lines(width)), 1)

    def render(self) -> Text:
        """The legend lines."""
        lines = self._lines(self.content_size.width)
        return Text("\n").join(lines) if lines else Text("")
