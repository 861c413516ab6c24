"""The phase strip: loading -> LoRA -> setup -> training, with what each phase added."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.geometry import Size

from ftwatch.runlog.events import PHASES
from ftwatch.runlog.phases import unwatched_phases
from ftwatch.runlog.state import PhaseRecord
from ftwatch.views.dashboard import fmt
from ftwatch.views.dashboard.palette import ACCENT, DANGER, DIM, GOOD, WATCH
from ftwatch.views.dashboard.widgets.lines import ChangedLines

SHORT = {"loading_model": "loading", "applying_lora": "LoRA", "preparing_trainer": "setup", "training": "training"}


#: What an unwatched phase says (one that ran before ftwatch was watching), by the header's ``origin``.
UNWATCHED = {"callback": "before callback"}
UNWATCHED_DEFAULT = "not watched"


def phase_cells(phases: list[PhaseRecord], current: str | None, exit_status: str | None,
                capacity: int | None, last_t: float | None,
                origin: str | None = None) -> list[tuple[str, str, str, float | None, Style]]:
    """Per phase: (icon, name, detail, added share of capacity, style), in the run's order; a phase
    that ran before ftwatch was watching says so (``origin``: the header's, for the wording)."""
    seen = {p.name: p for p in phases}
    names = list(PHASES) + [p.name for p in phases if p.name not in PHASES]
    unwatched = unwatched_phases(phases)
    out = []
    for name in names:
        record = seen.get(name)
        label = SHORT.get(name, name)
        if record is None and name in unwatched:
            out.append(("–", label, UNWATCHED.get(origin or "", UNWATCHED_DEFAULT), None, Style(color=DIM)))
            continue
        if record is None:
            out.append(("·", label, "", None, Style(color=DIM)))
            continue
        is_last = record is phases[-1]
        if is_last and exit_status in ("oom", "failed"):
            icon, style = "✖", Style(color=DANGER, bold=True)
        elif is_last and exit_status == "stopped":
            icon, style = "■", Style(color=WATCH, bold=True)
        elif is_last and exit_status is None and name == current:
            icon, style = "▶", Style(color=ACCENT, bold=True)
        else:
            icon, style = "✔", Style(color=GOOD)
        added = record.added
        end = record.end_t if record.end_t is not None else last_t
        seconds = (end - record.start_t) if end is not None else None
        detail = f"+{fmt.size(added)}" if added is not None and added >= 0 else (
            f"−{fmt.size(-added)}" if added is not None else "+?")
        if seconds is not None:
            detail += f" {fmt.duration(seconds)}"
        share = (added / capacity) if capacity and added is not None and added > 0 else None
        out.append((icon, label, detail, share, style))
    return out


def render_strip(cells: list[tuple[str, str, str, float | None, Style]], width: int, rows: int) -> Text:
    """Lay the phases out in equal columns joined by arrows; ``rows`` is 2 or 3 (with mini bars)."""
    n = max(len(cells), 1)
    arrow = " → "
    col = max((width - len(arrow) * (n - 1)) // n, 6)
    lines = [Text(no_wrap=True, overflow="crop") for _ in range(rows)]
    for i, (icon, label, detail, share, style) in enumerate(cells):
        if i:
            lines[0].append(arrow, Style(color=DIM))
            for line in lines[1:]:
                line.append(" " * len(arrow))
        lines[0].append(f"{icon} {label}"[:col].ljust(col), style)
        lines[1].append(detail[:col].ljust(col), Style(bold=True) if detail and icon != "–" else Style(color=DIM))
        if rows > 2:
            filled = 0 if share is None else max(int(share * col + 0.5), 1)
            filled = min(filled, col)
            lines[2].append("▀" * filled, Style(color=style.color))
            lines[2].append(" " * (col - filled))
    return Text("\n").join(lines)


class PhaseStrip(ChangedLines):
    """Which phase the run is in, and the memory and time each phase took."""

    DEFAULT_CSS = """
    PhaseStrip { height: auto; width: 1fr; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id, classes=classes)
        self.cells: list[tuple[str, str, str, float | None, Style]] = []
        self.rows = 2
        self._key: object = None

    def show(self, cells: list[tuple[str, str, str, float | None, Style]], rows: int = 2) -> None:
        """Show prepared phase cells."""
        key = (tuple((c[0], c[1], c[2], c[3]) for c in cells), rows)
        if key != self._key:
            resized = rows != self.rows
            self.cells, self.rows, self._key = cells, rows, key
            self.redraw(layout=resized)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        """Two lines, three with the mini bars."""
        return self.rows

    def render(self) -> Text:
        """The strip."""
        return render_strip(self.cells, self.content_size.width, self.rows)
