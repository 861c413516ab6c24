"""Following a run repaints only what changed: a widget redraws the rows whose text changed
(tests/views/paint_terminal.py paints what the terminal is sent)."""

from __future__ import annotations

import time
from collections.abc import Callable

from paint_terminal import PaintedTerminal
from rich.style import Style
from rich.text import Text
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widget import Widget
from textual.widgets import Static

from ftwatch.views.dashboard.widgets.lines import ChangedLines
from ftwatch.views.dashboard.widgets.status import StatusLine


async def wait_for(pilot: Pilot, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Until ``predicate()`` holds (a generous deadline: a loaded machine draws late, never wrong)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await pilot.pause(0.02)


class PlainText(Widget):
    """Textual's own rendering of a text, to compare with."""

    DEFAULT_CSS = "PlainText { height: 6; width: 32; padding: 0 1; }"

    def __init__(self) -> None:
        super().__init__()
        self.text: object = Text("")

    def render(self) -> object:  # noqa: D102 - the text as given
        return self.text


class LinesText(ChangedLines):
    """The same text, drawn line by line."""

    DEFAULT_CSS = "LinesText { height: 6; width: 32; padding: 0 1; }"

    def __init__(self) -> None:
        super().__init__()
        self.text: object = Text("")

    def render(self) -> object:  # noqa: D102 - the text as given
        return self.text


class Pair(App[None]):
    def compose(self) -> ComposeResult:
        yield PlainText()
        yield LinesText()


TEXTS = [
    Text("hello\nworld"),
    Text("a\n\nb"),
    Text("a\n"),
    Text(""),
    Text("x" * 45 + "\nwraps: wider than the widget"),
    Text.assemble(("red ", Style(color="red")), ("bold\nacross lines", Style(bold=True)), " plain"),
    Text("wide 中文字 chars\nsecond", style="dim"),
    Text("\n").join([Text("one", style=Style(bgcolor="#123456")), Text("two  ", no_wrap=True)]),
    Text("tab\there\nend"),
    Text("1\n2\n3\n4\n5\n6\n7\n8: more lines than rows"),
    Text("hello\nworld, changed"),
    "[b]markup[/b] string\nsecond",
]


async def test_a_widget_drawn_line_by_line_shows_what_textual_draws_of_the_whole_text() -> None:
    app = Pair()
    async with app.run_test(size=(40, 14)) as pilot:
        plain, lines = app.query_one(PlainText), app.query_one(LinesText)
        for text in TEXTS:  # one after the other: each redraw reuses the rows of the one before
            plain.text, lines.text = text, text
            plain.refresh()
            lines.redraw()
            await pilot.pause()
            height = plain.size.height
            # Segments with their styles, the text-selection offsets in their metadata included.
            expected = [list(plain.render_line(y)) for y in range(height)]
            assert [list(lines.render_line(y)) for y in range(height)] == expected, repr(text)


class StatusOnly(App[None]):
    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        yield Static("below")


async def test_a_status_change_on_one_line_repaints_that_row_alone() -> None:
    app = StatusOnly()
    async with app.run_test(size=(60, 6)) as pilot:
        status = app.query_one(StatusLine)
        status.show(Text("● LIVE  my-run  llama\nstep 1/10  loss 2.5"))
        await wait_for(pilot, lambda: "step 1/10" in status.render().plain)
        await pilot.pause()
        terminal = PaintedTerminal(app)
        sent = len(terminal.updates)
        status.show(Text("● LIVE  my-run  llama\nstep 2/10  loss 2.4"))
        await wait_for(pilot, lambda: len(terminal.updates) > sent)
        assert terminal.rows_since(sent) == {1}  # the first row is the same: not sent again
        assert terminal.grid.text()[1].startswith("step 2/10  loss 2.4")
        assert terminal.grid.cells == terminal.full_redraw().cells
        sent = len(terminal.updates)
        status.show(Text("● LIVE  my-run  llama\nstep 2/10  loss 2.4"))  # the same text again
        status.show(Text("● LIVE  my-run  llama\nstep 3/10  loss 2.3"))
        await wait_for(pilot, lambda: len(terminal.updates) > sent)
        assert terminal.rows_since(sent) == {1}
        assert terminal.grid.cells == terminal.full_redraw().cells
