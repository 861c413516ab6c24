"""A virtual terminal for the dashboard's tests: what Textual sends to the terminal, painted cell by cell.

Textual writes a frame as cursor moves, SGR styles and text (``CompositorUpdate.render_segments``);
an update after the first covers only the regions that were repainted. :class:`PaintedTerminal`
records every update an app sends (in the headless test driver nothing is written, so the app's
display call is wrapped) and paints it onto a grid of ``(character, style)`` cells, so a test can
ask which rows a change repainted and compare what the terminal holds with a full redraw.
"""

from __future__ import annotations

import re
from typing import Any

from rich.cells import cell_len
from textual.app import App

_ESCAPE = re.compile(r"\x1b\[(?:(\d+);(\d+)H|([0-9;]*)m)")

Cell = tuple[str, str]


class Grid:
    """``height`` rows of ``width`` cells, each a character and the SGR codes it was written with."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.cells: list[list[Cell]] = [[(" ", "")] * width for _ in range(height)]

    def paint(self, data: str) -> set[int]:
        """Apply terminal output; returns the rows it wrote characters on."""
        x = y = 0
        style = ""
        rows: set[int] = set()
        pos = 0
        for match in _ESCAPE.finditer(data):
            x, y = self._text(data[pos:match.start()], x, y, style, rows)
            pos = match.end()
            row, col, sgr = match.groups()
            if row is not None:
                y, x = int(row) - 1, int(col) - 1
            elif sgr in ("", "0"):
                style = ""
            else:
                style += f"[{sgr}]"
        self._text(data[pos:], x, y, style, rows)
        return rows

    def _text(self, text: str, x: int, y: int, style: str, rows: set[int]) -> tuple[int, int]:
        for char in text:
            if char in "\r\n":
                continue
            if 0 <= y < self.height and 0 <= x < self.width:
                self.cells[y][x] = (char, style)
                rows.add(y)
            x += cell_len(char)
        return x, y

    def text(self) -> list[str]:
        """The characters of each row."""
        return ["".join(char for char, _ in row) for row in self.cells]


class PaintedTerminal:
    """Every update ``app`` sends from now on, painted in order onto one grid (the app's terminal);
    made while the app runs, it starts from a full redraw of the screen."""

    def __init__(self, app: App[Any]) -> None:
        self.app = app
        self.grid = self.full_redraw()  # what the terminal holds already: the app is running
        #: The rows each update wrote, in order.
        self.updates: list[set[int]] = []
        display = app._display

        def capture(screen: Any, renderable: Any) -> None:
            if renderable is not None and hasattr(renderable, "render_segments"):
                self.updates.append(self.grid.paint(renderable.render_segments(app.console)))
            display(screen, renderable)

        app._display = capture  # type: ignore[method-assign]  # the headless driver writes nothing

    def full_redraw(self) -> Grid:
        """What a redraw of the whole screen, from the widgets as they are now, would show."""
        width, height = self.app.size
        grid = Grid(width, height)
        update = self.app.screen._compositor.render_update(full=True)
        grid.paint(update.render_segments(self.app.console))
        return grid

    def rows_since(self, count: int) -> set[int]:
        """The rows written by the updates after the first ``count``."""
        return set().union(*self.updates[count:])
