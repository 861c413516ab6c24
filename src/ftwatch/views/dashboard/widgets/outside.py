"""The notice of a process watched from outside (``ftwatch attach PID`` without a probe in it)."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text

from ftwatch.views.dashboard.palette import ACCENT, DIM, WATCH
from ftwatch.views.dashboard.run_view import RunView

#: The one line that gives a Trainer the breakdown, and its import.
TRAINER_LINE = "callbacks=[FtwatchCallback()]"
IMPORT_LINE = "from ftwatch import FtwatchCallback"


def outside_notice(view: RunView) -> Text:
    """Says there is no category breakdown, why, and the line that adds one to a Trainer."""
    pid = view.header.get("pid")
    what = f"PID {pid}" if pid is not None else "this process"
    text = Text(no_wrap=False)
    text.append(f"No category breakdown: {what} is watched from outside (NVML, psutil).\n",
                Style(color=WATCH, bold=True))
    text.append("For one, add to its Trainer:  ", Style(color=DIM))
    text.append(TRAINER_LINE, Style(color=ACCENT, bold=True))
    text.append("\n" + " " * 30 + IMPORT_LINE, Style(color=ACCENT))
    return text
