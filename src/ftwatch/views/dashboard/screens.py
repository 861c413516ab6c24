"""The modal questions (quit, stop) and the help screen. All keyboard-driven."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from ftwatch.runlog.events import CATEGORIES
from ftwatch.views.dashboard.breakdown import WARN_FRACTION
from ftwatch.views.dashboard.palette import LOOKS, MEANINGS, PROCESS_REST

KEYS = [
    ("q", "quit (asks: stop the training, or leave it running)"),
    ("d", "detach: leave; the training goes on"),
    ("k", "stop the training cleanly at the next step"),
    ("space", "pause the display (not the training); again: resume"),
    ("f", "the warnings panel in full (fixes, summary); Tab ↑↓ scroll"),
    ("l", "more or less of the worker's output"),
    ("m", "memory by module: blocks, layers, their parts (s sort, enter open)"),
    ("s", "save an SVG screenshot in the run directory"),
    ("?", "this help (↑↓ scroll, esc closes)"),
]

#: A replay's keys (space, stop and detach mean something else there).
REPLAY_KEYS = [
    ("q", "quit"),
    ("space", "play / pause the replay (at the end: again from the start)"),
    ("→ ←", "pause at the end of the next / previous training step"),
    ("home", "the start of the run;  end: its end"),
    ("+ -", "play faster / slower"),
    ("f", "the warnings panel in full (fixes, summary); Tab ↑↓ scroll"),
    ("l", "more or less of the worker's output"),
    ("m", "memory by module: blocks, layers, their parts (s sort, enter open)"),
    ("s", "save an SVG screenshot in the run directory"),
    ("?", "this help (↑↓ scroll, esc closes)"),
]

#: The keys of a multi-process run (shown after the others).
RANK_KEYS = [
    ("[ ]", "show the previous / next rank in the panels"),
    ("w", "show the worst rank again, and follow it"),
]


class QuitScreen(ModalScreen[str | None]):
    """The training is still running: stop it, leave it running, or stay."""

    BINDINGS = [
        # k, as on the dashboard (s stays the screenshot there and here).
        Binding("k", "choose('stop')", "Stop training"),
        Binding("d", "choose('detach')", "Detach"),
        Binding("q", "choose('detach')", "Detach", show=False),  # q twice: leave, harmlessly
        Binding("escape", "choose(None)", "Cancel"),
        Binding("n", "choose(None)", "Cancel", show=False),
    ]

    def compose(self) -> ComposeResult:
        """The question and its three answers."""
        text = Text()
        text.append("The training is still running.\n\n", Style(bold=True))
        text.append(" k ", Style(reverse=True, bold=True))
        text.append("  stop it cleanly at the next step, then quit\n")
        text.append(" d ", Style(reverse=True, bold=True))
        text.append("  detach: quit the dashboard, training goes on (or q)\n")
        text.append(" esc ", Style(reverse=True, bold=True))
        text.append("  stay here")
        with Vertical(id="dialog"):
            yield Static(text)

    def action_choose(self, choice: str | None) -> None:
        """Answer the question."""
        self.dismiss(choice)


class ConfirmStopScreen(ModalScreen[bool]):
    """Stopping ends the run: ask once."""

    BINDINGS = [
        Binding("y", "answer(True)", "Stop training"),
        Binding("k", "answer(True)", "Stop training", show=False),
        Binding("n", "answer(False)", "Keep training"),
        Binding("escape", "answer(False)", "Keep training", show=False),
    ]

    def __init__(self, step: int, max_steps: int | None) -> None:
        super().__init__()
        self.step, self.max_steps = step, max_steps
        self._question = Static(self._text())

    def _text(self) -> Text:
        where = f"It is at step {self.step}" + (f" of {self.max_steps}" if self.max_steps else "")
        text = Text()
        text.append("Stop the training at the next step boundary?\n\n", Style(bold=True))
        text.append(f"{where}; it ends cleanly and writes its summary.\n\n")
        text.append(" y ", Style(reverse=True, bold=True))
        text.append("  stop      ")
        text.append(" n ", Style(reverse=True, bold=True))
        text.append("  keep training")
        return text

    def compose(self) -> ComposeResult:
        """The question."""
        with Vertical(id="dialog"):
            yield self._question

    def follow(self, step: int, max_steps: int | None, ended: bool) -> None:
        """The run moved on while the question is open: show its step; once it has ended there is
        nothing left to stop, and the question closes as a "no"."""
        if ended:
            if self.is_current:
                self.dismiss(False)
            return
        if (step, max_steps) != (self.step, self.max_steps):
            self.step, self.max_steps = step, max_steps
            self._question.update(self._text())

    def action_answer(self, yes: bool) -> None:
        """Answer the question."""
        self.dismiss(yes)


class TerminateScreen(ModalScreen[bool]):
    """A stop was asked for already and the worker is still there: offer to end it now."""

    BINDINGS = [
        Binding("t", "answer(True)", "Terminate now"),
        Binding("escape", "answer(False)", "Keep waiting"),
        Binding("n", "answer(False)", "Keep waiting", show=False),
    ]

    def compose(self) -> ComposeResult:
        """The question."""
        text = Text()
        text.append("A stop was requested; the worker has not reached a step boundary yet.\n\n",
                    Style(bold=True))
        text.append(" t ", Style(reverse=True, bold=True))
        text.append("  terminate it now (it still writes its exit event)\n")
        text.append(" esc ", Style(reverse=True, bold=True))
        text.append("  keep waiting")
        with Vertical(id="dialog"):
            yield Static(text)

    def action_answer(self, yes: bool) -> None:
        """Answer the question."""
        self.dismiss(yes)


def help_text(mono: bool = False, replay: bool = False, ranks: bool = False) -> Text:
    """The keys (a live run's, or a replay's; a multi-process run's too) and what the bar's colours mean."""
    text = Text()
    text.append("Keys\n", Style(bold=True))
    for key, meaning in [*(REPLAY_KEYS if replay else KEYS), *(RANK_KEYS if ranks else [])]:
        text.append(f" {key:>5} ", Style(reverse=True, bold=True))
        text.append(f"  {meaning}\n")
    if ranks:
        text.append("\nRanks: one row per process, its share of its own device; ▸ the rank the panels\n"
                    "show, ◀ the worst rank (the one that failed first, else the closest to running out).\n")
    text.append("\nThe bar, left to right\n", Style(bold=True))
    for name in (*CATEGORIES, PROCESS_REST):
        look = LOOKS[name]
        if mono:
            text.append(look.glyph * 2)
        else:
            text.append("  ", Style(bgcolor=look.colour))
        text.append(f" {look.label:<12} {MEANINGS[name]}\n")
    warn = f"{round(WARN_FRACTION * 100)}%"
    text.append(f"\nUnder the bar: ▲ the peak so far; ◆ the budget, else {warn} of\n"
                "the device (warnings start there).\n")
    text.append("Phases: what each added to the process, and how long it took.\n")
    text.append("\nThe timeline\n", Style(bold=True))
    text.append("━ the process and its largest categories over the run\n"
                "─ red: the capacity\n"
                f"─ yellow: the budget, else {warn} (the bar's ◆)\n"
                "│ grey: a phase begins (loading → LoRA → setup → training)\n"
                "▲ the peak\n"
                "On a CPU the RAM is often far above what the process holds:\n"
                "the scale is then the process's (capacity off scale).")
    return text


class HelpScreen(ModalScreen[None]):
    """Keys and colours."""

    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("question_mark", "close", "Close", show=False),
        Binding("q", "close", "Close", show=False),
    ]

    def __init__(self, replay: bool = False, ranks: bool = False) -> None:
        super().__init__()
        self.replay = replay
        self.ranks = ranks

    def compose(self) -> ComposeResult:
        """The help text, scrollable with the arrow keys on a small terminal."""
        with VerticalScroll(id="dialog", classes="help"):
            yield Static(help_text(self.app.no_color, replay=self.replay, ranks=self.ranks))

    def on_mount(self) -> None:
        """Focus the text so the arrow keys scroll it."""
        self.query_one(VerticalScroll).focus()

    def action_close(self) -> None:
        """Close the help."""
        self.dismiss(None)
