"""The last lines of the training process's output (``worker.log``)."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from ftwatch.views.dashboard.palette import DIM
from ftwatch.views.dashboard.worker_tail import missing_log_note


def fit_lines(lines: list[str], width: int, height: int) -> Text:
    """The last ``height`` lines, each cut to ``width`` cells (the cut marked with an ellipsis)."""
    shown = lines[-height:] if height > 0 else []
    out = []
    for line in shown:
        out.append(line if len(line) <= width else line[: max(width - 1, 0)] + "…")
    return Text("\n".join(out), no_wrap=True, overflow="crop")


class WorkerLog(Widget):
    """A tail of the worker's output that fills the height it is given."""

    DEFAULT_CSS = """
    WorkerLog { height: 1fr; width: 1fr; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id, classes=classes)
        self.lines: list[str] = []
        self.exists = False
        self._version = -1
        #: The header's ``origin`` and ``external`` (what to say while there is no output).
        self.origin: str | None = None
        self.external = False

    def show(self, lines: list[str], version: int, exists: bool, header: dict | None = None) -> None:
        """Take new lines (only redrawn when the log changed); ``header`` is the run's header."""
        origin = (header or {}).get("origin")
        external = bool((header or {}).get("external"))
        if version != self._version or exists != self.exists or (origin, external) != (self.origin, self.external):
            self.lines, self._version, self.exists = lines, version, exists
            self.origin, self.external = origin if isinstance(origin, str) else None, external
            self.refresh()

    def render(self) -> Text:
        """The tail, or a note while there is none."""
        if not self.lines:
            note = missing_log_note(self.exists, self.origin, self.external)
            return Text(note, style=Style(color=DIM))
        return fit_lines(self.lines, self.content_size.width, self.content_size.height)
