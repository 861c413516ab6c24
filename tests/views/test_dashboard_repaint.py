"""Following a run repaints only what changed: a widget redraws the rows whose text changed, a panel
its title row, and what the terminal is sent, frame after frame, adds up to the screen a full redraw
would show (tests/views/paint_terminal.py paints the updates)."""

from __future__ import annotations

from pathlib import Path

from paint_terminal import PaintedTerminal
from rich.style import Style
from rich.text import Text
from test_dashboard_app import wait_for
from textual.app import App, ComposeResult
from textual.widget import Widget
from textual.widgets import Static

from conftest import AliveHandle
from ftwatch.views.dashboard.app import FtwatchApp
from ftwatch.views.dashboard.demo import iter_lines
from ftwatch.views.dashboard.feed import RunFeed
from ftwatch.views.dashboard.widgets.lines import ChangedLines
from ftwatch.views.dashboard.widgets.panel import Panel
from ftwatch.views.dashboard.widgets.status import StatusLine


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


class OnePanel(App[None]):
    CSS = ".panel { border-top: solid gray; padding: 0 1; height: auto; }"

    def compose(self) -> ComposeResult:
        with Panel(classes="panel"):
            yield Static("inside\nthe panel")


async def test_a_new_panel_title_repaints_the_title_row_alone() -> None:
    app = OnePanel()
    async with app.run_test(size=(40, 6)) as pilot:
        panel = app.query_one(Panel)
        panel.set_title("Memory · 1.00 GiB")
        await wait_for(pilot, lambda: panel.title_repaints == 1)
        await pilot.pause()
        terminal = PaintedTerminal(app)
        sent = len(terminal.updates)
        panel.set_title("Memory · 2.00 GiB")
        await wait_for(pilot, lambda: len(terminal.updates) > sent)
        assert terminal.rows_since(sent) == {0}
        assert "Memory · 2.00 GiB" in terminal.grid.text()[0]
        assert terminal.grid.cells == terminal.full_redraw().cells


async def test_following_a_run_sends_the_changed_rows_and_ends_on_the_full_screen(tmp_path: Path) -> None:
    """A live run frame by frame (five samples and a step each, the chart every fourth frame), drawn
    by the app's own render with a fixed clock: after every frame the terminal holds what a full
    redraw shows, and a frame without the chart sends only rows whose cells changed (the status
    line's first row, the panels' unchanged rows and the legend's steady entries are not sent)."""
    log = tmp_path / "events.jsonl"
    log.touch()
    lines = [line for _, line in iter_lines("cuda", steps=60, ending="running", hz=10.0, step_seconds=0.5)]
    start = next(i for i, line in enumerate(lines) if '"name":"training"' in line) + 60
    feed = RunFeed(log, AliveHandle())  # type: ignore[arg-type]  # a stand-in handle
    app = FtwatchApp(log, AliveHandle(), feed=feed)  # type: ignore[arg-type]
    app.feed.start = lambda: None  # type: ignore[method-assign]  # read here, frame by frame
    app._tick = lambda: None  # type: ignore[method-assign]  # drawn here, with the test's clock
    now = 1000.0

    def frame(chunk: list[str]) -> None:
        nonlocal now
        with log.open("a") as out:
            out.write("".join(chunk))
        while feed.pump():
            pass
        now += 0.5
        view = feed.view()
        view.last_event_wall = now  # never stale
        app.render_view(view, now)

    async with app.run_test(size=(120, 36)) as pilot:
        frame(lines[:start])
        await wait_for(pilot, lambda: "LIVE" in app.w_status.render().plain)
        await pilot.pause()
        terminal = PaintedTerminal(app)
        steady = []
        for first in range(start, start + 6 * 12, 6):
            before = terminal.grid.text(), [row[:] for row in terminal.grid.cells]
            sent = len(terminal.updates)
            charted = app._plot_version
            frame(lines[first:first + 6])
            await wait_for(pilot, lambda sent=sent: len(terminal.updates) > sent)
            await pilot.pause()
            assert terminal.grid.cells == terminal.full_redraw().cells
            if app._plot_version == charted:  # the chart was not drawn in this frame
                changed = {y for y, row in enumerate(terminal.grid.cells) if row != before[1][y]}
                written = terminal.rows_since(sent)
                assert written <= changed, (sorted(written - changed), before[0])  # nothing sent twice
                steady.append(written)
        assert len(steady) >= 6
