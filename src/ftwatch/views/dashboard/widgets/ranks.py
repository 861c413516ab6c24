"""The ranks panel of a multi-process run: one compact line per rank, the worst marked, the focus lit.

::

    ▸r0 cuda:0 ██████████░░░░░░  61%  14.2/23.6 GiB  step 120  ok
     r1 cpu    DEAD: process vanished at step 41                 ◀ worst

Each bar is the rank's occupied share of its own capacity, coloured by its risk while it runs
(by its ending once it has ended). Rows stay one line each; the panel scrolls when there are more
ranks than rows. Under ``NO_COLOR`` everything reads from the glyphs and words alone.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.containers import VerticalScroll
from textual.geometry import Size
from textual.widget import Widget

from ftwatch.views.dashboard import fmt
from ftwatch.views.dashboard.palette import DANGER, DIM, GOOD, WATCH
from ftwatch.views.dashboard.rank_rows import RankRow, RanksView

RISK_WORDS = ("ok", "watch", "danger")
RISK_COLOURS = (GOOD, WATCH, DANGER)
#: A rank's ending -> (what its row says, colour).
OUTCOMES = {"finished": ("✔ finished", GOOD), "stopped": ("■ stopped", WATCH), "failed": ("✖ FAILED", DANGER),
            "oom": ("✖ OOM", DANGER)}
FOCUS_GLYPH = "▸"
WORST_MARK = "◀ worst"
FILL, EMPTY = "█", "░"
EMPTY_COLOUR = "#444444"
FOCUS_BACKGROUND = "#262626"
#: Narrowest bar worth drawing; columns are dropped (peak, then sizes, then device) to keep it.
MIN_BAR = 10


def status_word(row: RankRow) -> tuple[str, str]:
    """What the row's last column says and its colour: the risk while running, else the ending."""
    if row.status == "waiting":
        return "no log yet", DIM
    if row.status == "running":
        level = min(max(row.risk, 0), 2)
        return RISK_WORDS[level], RISK_COLOURS[level]
    return OUTCOMES.get(row.status, (row.status, DANGER))


def standing(row: RankRow) -> str:
    """One word for a rank, for the panel's title: ``dead``, ``failed``, ``watch``, ``ok``..."""
    if row.vanished:
        return "dead"
    if row.status == "running":
        return RISK_WORDS[min(max(row.risk, 0), 2)]
    return "no log" if row.status == "waiting" else row.status


def dead_text(row: RankRow) -> str:
    """What a rank whose process vanished shows in place of its bar."""
    return f"DEAD: process vanished at step {row.step}"


def size_pair(used: int | None, capacity: int | None) -> str:
    """``14.2/23.6 GiB`` (one unit when both share it), else ``530 MiB/23.6 GiB``."""
    left, right = fmt.size(used), fmt.size(capacity)
    if used is None or capacity is None:
        return f"{left}/{right}"
    (lv, lu), (rv, ru) = left.rsplit(" ", 1), right.rsplit(" ", 1)
    return f"{lv}/{rv} {ru}" if lu == ru else f"{left}/{right}"


def all_finished(ranks: RanksView) -> bool:
    """Every rank of the whole job ended well: no rank is the worst, none is marked so."""
    return (bool(ranks.rows) and not ranks.missing and len(ranks.rows) >= ranks.world_size
            and all(row.ended and row.status == "finished" and not row.vanished for row in ranks.rows))


def worst_rank(ranks: RanksView) -> int | None:
    """The rank marked ``◀ worst``: the view's worst, unless every rank finished fine."""
    return None if all_finished(ranks) else ranks.worst


def ranks_title(ranks: RanksView) -> str:
    """The panel's title: ``Ranks 2/2 · worst r1 (dead) · focus r1`` (``all finished`` in place of
    a worst rank once every rank finished fine)."""
    title = f"Ranks {ranks.started}/{len(ranks.rows)}"
    if ranks.world_size > len(ranks.rows):
        title += f" of {ranks.world_size}"
    worst = ranks.worst_row
    if all_finished(ranks):
        title += " · all finished"
    elif worst is not None:
        title += f" · worst r{worst.rank} ({standing(worst)})"
    if ranks.focus is not None:
        title += f" · focus r{ranks.focus}" + ("" if ranks.following_worst else " (w: worst)")
    if ranks.missing:
        title += " · no log: " + " ".join(f"r{r}" for r in ranks.missing)
    return title


def _bar(fraction: float | None, cells: int, colour: str, mono: bool) -> Text:
    filled = 0 if fraction is None else min(max(int(fraction * cells + 0.5), 0), cells)
    if mono:
        return Text(FILL * filled + EMPTY * (cells - filled))
    return Text.assemble((FILL * filled, Style(color=colour)), (EMPTY * (cells - filled), Style(color=EMPTY_COLOUR)))


def render_rows(ranks: RanksView, width: int, *, mono: bool = False, compact: bool = False) -> list[Text]:
    """One line per rank at ``width`` cells, columns aligned across the rows."""
    rows = ranks.rows
    if not rows:
        return [Text("waiting for the ranks to start writing their logs…", style=DIM)]
    rank_w = max(len(f"r{r.rank}") for r in rows)
    device_w = max(len(r.device) for r in rows)
    shares = {r.rank: fmt.share(r.fraction) or "–" for r in rows}
    sizes = {r.rank: size_pair(r.occupied, r.capacity) for r in rows}
    steps = {r.rank: f"step {r.step}" for r in rows}
    peaks = {r.rank: f"peak {fmt.size(r.peak)}" if r.peak else "" for r in rows}
    words = {r.rank: status_word(r) for r in rows}
    share_w = max(len(s) for s in shares.values())
    size_w = max(len(s) for s in sizes.values())
    step_w = max(len(s) for s in steps.values())
    peak_w = max(len(s) for s in peaks.values())
    word_w = max(len(w) for w, _ in words.values())
    marked = worst_rank(ranks)
    worst_w = len(WORST_MARK) + 2 if marked is not None else 0

    show_device, show_sizes, show_peak = True, True, not compact and peak_w > 0

    def fixed() -> int:
        head = 1 + rank_w + 1 + (device_w + 1 if show_device else 0)
        tail = 1 + share_w + (2 + size_w if show_sizes else 0) + 2 + step_w + (2 + peak_w if show_peak else 0)
        return head + tail + 2 + word_w + worst_w

    for drop in ("peak", "sizes", "device"):
        if width - fixed() >= MIN_BAR:
            break
        if drop == "peak":
            show_peak = False
        elif drop == "sizes":
            show_sizes = False
        else:
            show_device = False
    bar_w = max(width - fixed(), 3)

    lines = []
    for row in rows:
        focused, worst = row.rank == ranks.focus, row.rank == marked
        line = Text(no_wrap=True, overflow="crop")
        line.append(FOCUS_GLYPH if focused else " ", Style(bold=True))
        line.append(f"r{row.rank}".ljust(rank_w), Style(bold=focused or worst))
        line.append(" ")
        if show_device:
            line.append(row.device.ljust(device_w) + " ", Style(color=DIM) if not mono else Style())
        word, colour = words[row.rank]
        body_w = bar_w + fixed() - line.cell_len - worst_w
        if row.vanished:
            line.append(dead_text(row).ljust(body_w)[:body_w], Style(bold=True) if mono else
                        Style(color=DANGER, bold=True))
        elif row.status == "waiting":
            line.append(word.ljust(body_w)[:body_w], Style() if mono else Style(color=DIM))
        else:
            line.append_text(_bar(row.fraction, bar_w, colour, mono))
            line.append(" " + shares[row.rank].rjust(share_w), Style(bold=True))
            if show_sizes:
                line.append("  " + sizes[row.rank].ljust(size_w))
            line.append("  " + steps[row.rank].ljust(step_w))
            if show_peak:
                line.append("  " + peaks[row.rank].ljust(peak_w), Style() if mono else Style(color=DIM))
            line.append("  ")
            line.append(word.ljust(word_w), Style(bold=row.status != "running" or row.risk > 0) if mono
                        else Style(color=colour, bold=row.status != "running" or row.risk > 0))
        if worst_w:
            alarming = (row.ended and row.status != "finished") or row.risk > 0
            line.append(("  " + WORST_MARK) if worst else " " * worst_w, Style(bold=True) if mono else
                        Style(color=DANGER if alarming else DIM, bold=True))
        if focused and not mono:
            line.stylize(Style(bgcolor=FOCUS_BACKGROUND))
        lines.append(line)
    return lines


class RanksList(Widget):
    """The rank rows (one line each); its box scrolls when they do not fit."""

    DEFAULT_CSS = """
    RanksList { height: auto; width: 1fr; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id, classes=classes)
        self.ranks: RanksView | None = None
        self.mono = False
        self.compact = False
        self._key: object = None

    def show(self, ranks: RanksView, mono: bool = False, compact: bool = False) -> None:
        """Draw ``ranks`` (refreshes only when something visible changed)."""
        key = (ranks, mono, compact)
        if key == self._key:
            return
        resized = self.ranks is None or len(ranks.rows) != len(self.ranks.rows)
        self.ranks, self.mono, self.compact, self._key = ranks, mono, compact, key
        self.refresh(layout=resized)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        """One line per rank."""
        return max(len(self.ranks.rows) if self.ranks is not None else 0, 1)

    def render(self) -> Text:
        """The rows."""
        if self.ranks is None:
            return Text("")
        lines = render_rows(self.ranks, self.content_size.width, mono=self.mono, compact=self.compact)
        return Text("\n").join(lines)


class RanksBox(VerticalScroll, can_focus=False):
    """The ranks panel's frame: scrolls (mouse wheel, or the focus moving) without taking the keys."""

    def keep_visible(self, index: int) -> None:
        """Scroll so that row ``index`` is in view."""
        height = self.scrollable_content_region.height
        if height <= 0:
            return
        top = int(self.scroll_y)
        if index < top:
            self.scroll_to(y=index, animate=False)
        elif index >= top + height:
            self.scroll_to(y=index - height + 1, animate=False)
