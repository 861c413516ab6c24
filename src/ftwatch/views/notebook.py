"""A compact live summary of a run under a Jupyter cell: the memory bar as text and its numbers.

``FtwatchCallback`` shows it when it runs inside an IPython kernel (``get_ipython()`` with a
kernel): one output area, updated in place at most twice a second, and one printed line naming
``ftwatch attach PID`` for the full dashboard (from a terminal). It is a view like the others: it
follows the probe's run log with :class:`~ftwatch.runlog.sources.LogFollower`, folds it into a
:class:`~ftwatch.runlog.state.RunState` on a daemon thread, and never touches the training.

IPython stays optional: nothing here imports it unless it is already loaded (a kernel has it).
"""

from __future__ import annotations

import html
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftwatch.common.safe_text import safe
from ftwatch.common.units import format_bytes, format_duration
from ftwatch.runlog.events import TENSOR_CATEGORIES
from ftwatch.runlog.sources import LogFollower
from ftwatch.runlog.state import RunState

#: The fastest the output area is redrawn (seconds between updates: ~2 Hz).
MIN_INTERVAL = 0.5
#: How often the follower thread looks for new events.
POLL_SECONDS = 0.1
BAR_WIDTH = 40
#: The bar's character for each tensor category (the legend line repeats them).
BAR_CHARS = {"weights": "█", "lora": "▓", "grads": "▒", "optimizer": "░", "activations": "▚"}
FREE_CHAR = "·"


def in_jupyter() -> bool:
    """True inside an IPython kernel (a notebook), without importing IPython when it is not loaded."""
    module = sys.modules.get("IPython")
    getter = getattr(module, "get_ipython", None) if module is not None else None
    if getter is None:
        return False
    try:
        shell = getter()
    except Exception:
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def text_bar(categories: dict[str, int], capacity: int | None, width: int = BAR_WIDTH) -> str:
    """The tensor categories as a bar of ``width`` cells against ``capacity`` (against their sum
    when it is not known); a category that holds anything gets at least one cell."""
    parts = [(c, int(categories.get(c) or 0)) for c in TENSOR_CATEGORIES]
    used = sum(v for _, v in parts)
    scale = capacity if capacity and capacity >= used else used
    if not scale:
        return "[" + FREE_CHAR * width + "]"
    cells = [(c, max(1, round(v * width / scale)) if v > 0 else 0) for c, v in parts]
    while sum(n for _, n in cells) > width:  # the minimum cells overflowed: take from the widest
        i = max(range(len(cells)), key=lambda k: cells[k][1])
        cells[i] = (cells[i][0], cells[i][1] - 1)
    bar = "".join(BAR_CHARS[c] * n for c, n in cells)
    return "[" + bar + FREE_CHAR * (width - len(bar)) + "]"


def summary_text(state: RunState, pid: int | None = None) -> str:
    """The summary's lines: run and step, the bar, the numbers, the ending."""
    header = state.header
    title = " · ".join(safe(str(x), one_line=True) for x in (header.get("name"), header.get("model")) if x)
    where = state.phase or "starting"
    steps = f"step {state.step}" + (f"/{state.max_steps}" if state.max_steps else "")
    line1 = f"ftwatch · {title or 'run'} · {where} · {steps}"
    rate = state.steps_per_second
    if state.exit is None and rate and state.max_steps and state.phase == "training":
        line1 += f" · ETA {format_duration(max(state.max_steps - state.step, 0) / rate)}"
    cats = state.categories
    capacity = state.capacity
    used = state.tensor_total()
    share = f" ({100.0 * used / capacity:.1f}%)" if capacity else ""
    against = f" of {format_bytes(capacity)}{share}" if capacity else ""
    line2 = f"{text_bar(cats, capacity)} {format_bytes(used)}{against}"
    numbers = [f"{BAR_CHARS[c]} {c} {format_bytes(cats[c]) if c in cats else 'n/a'}" for c in TENSOR_CATEGORIES]
    line3 = "  ".join(numbers) + f"  · peak {format_bytes(state.peak_total) if state.peak_total else 'n/a'}"
    lines = [line1, line2, line3]
    if state.exit is not None:
        lines.append(f"ended: {safe(str(state.status), one_line=True)} at step {state.step}")
    elif pid is not None:
        lines.append(f"full dashboard: ftwatch attach {pid}")
    return "\n".join(lines)


class SummaryOutput:
    """What the output area displays: plain text, and a ``<pre>`` block for HTML front ends."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        return f"<pre style='margin:0'>{html.escape(self.text)}</pre>"


class NotebookSummary:
    """Follows a run log and keeps one notebook output area up to date (a daemon thread).

    ``display`` is IPython's ``display`` (looked up in ``IPython.display`` when not given): called
    once with ``display_id=True``, then the handle it returns is updated in place.
    """

    def __init__(self, run_dir: str | os.PathLike[str], pid: int | None = None, *,
                 display: Callable[..., Any] | None = None, interval: float = MIN_INTERVAL,
                 out: Any = None) -> None:
        self.run_dir = Path(run_dir)
        self.pid = pid
        self.interval = max(float(interval), MIN_INTERVAL)
        self.state = RunState()
        self.updates = 0
        self.last_text = ""
        self._display = display
        self._out = out
        self._handle: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> NotebookSummary:
        """Print the attach line, show the summary and follow the log from a daemon thread."""
        display = self._display
        if display is None:
            from IPython.display import display  # only called inside a kernel, where IPython is loaded
        if self.pid is not None:
            print(f"ftwatch: the full dashboard: run `ftwatch attach {self.pid}` in a terminal",
                  file=self._out or sys.stdout, flush=True)
        self.last_text = summary_text(self.state, self.pid)
        self._handle = display(SummaryOutput(self.last_text), display_id=True)
        self._thread = threading.Thread(target=self._run, name="ftwatch-notebook", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        follower = LogFollower(self.run_dir)
        last_update = 0.0
        while True:
            stopping = self._stop.is_set()
            try:
                self.state.apply_all(follower.poll())
            except Exception:  # an unreadable log: the summary stays as it was
                return
            ended = self.state.exit is not None
            now = time.monotonic()
            if ended or stopping or now - last_update >= self.interval:
                self._update()
                last_update = now
            if ended or stopping:
                return
            self._stop.wait(POLL_SECONDS)

    def _update(self) -> None:
        text = summary_text(self.state, self.pid)
        if text == self.last_text or self._handle is None:
            return
        self.last_text = text
        try:
            self._handle.update(SummaryOutput(text))
            self.updates += 1
        except Exception:
            self._handle = None  # the front end went away: stop drawing

    def stop(self, timeout: float = 5.0) -> None:
        """Draw the last state and stop following (waits up to ``timeout`` seconds)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
