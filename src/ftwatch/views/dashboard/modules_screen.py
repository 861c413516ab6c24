"""The module view (key ``m``): where inside the model the memory is, from the run's last
``modules`` event, as a sortable table (:class:`~ftwatch.views.dashboard.widgets.modules.ModuleTable`)
with the advice from that tree below it. The same in a live run and in a replay: the screen reads
the feed's folded state (``RunState.modules``) under the feed's lock and redraws when it changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from ftwatch.views.dashboard.widgets.modules import SORT_LABELS, ModuleTable
from ftwatch.views.headless.modules_table import advice_lines, caption, no_modules_reason

if TYPE_CHECKING:
    from ftwatch.views.dashboard.feed import RunFeed

#: Seconds between two looks at the feed for a newer modules event.
POLL = 0.25


def feed_modules(feed: RunFeed) -> tuple[Mapping[str, Any] | None, str]:
    """The feed's last modules payload (or None) and, without one, why (one line)."""
    with feed.lock:
        state = feed.state
        payload = getattr(state, "modules", None)
        header, step, ended = state.header, state.step, state.exit is not None or feed.ended
    if isinstance(payload, Mapping) and payload:
        return payload, ""
    return None, no_modules_reason(header, step, ended)


class ModulesScreen(Screen[None]):
    """The module table of the run the dashboard shows; Escape, ``m`` or ``q`` go back."""

    DEFAULT_CSS = """
    ModulesScreen {
        layout: vertical;
    }
    ModulesScreen #modules-caption {
        height: auto;
        padding: 0 1;
        color: $text-muted;
    }
    ModulesScreen #modules-empty {
        height: 1fr;
        padding: 1 1;
    }
    ModulesScreen #modules-advice-box {
        height: auto;
        max-height: 6;
        border-top: solid $panel-lighten-2;
        border-title-color: $text-muted;
        padding: 0 1;
        scrollbar-size-vertical: 1;
    }
    """

    BINDINGS = [
        Binding("escape", "close", "Back"),
        Binding("m", "close", "Back", show=False),
        Binding("q", "close", "Back", show=False),
        Binding("s", "sort", "Sort"),
    ]

    def __init__(self, feed: RunFeed) -> None:
        super().__init__()
        self.feed = feed
        self.payload: Mapping[str, Any] | None = None
        self.reason = ""

    def compose(self) -> ComposeResult:
        """Caption, table (or why there is none), advice, keys."""
        yield Static(id="modules-caption")
        yield ModuleTable(id="modules-table")
        yield Static(id="modules-empty")
        with VerticalScroll(id="modules-advice-box"):
            yield Static(id="modules-advice")
        yield Footer()

    def on_mount(self) -> None:
        """Draw what the feed has, then look for newer figures a few times a second."""
        self.query_one("#modules-advice-box").border_title = "Advice · Tab ↑↓ scroll"
        self.table = self.query_one(ModuleTable)
        self.update_from_feed()
        self.table.focus()
        self.set_interval(POLL, self.update_from_feed)

    def update_from_feed(self) -> None:
        """Redraw when the feed has another modules payload (or another reason for none)."""
        payload, reason = feed_modules(self.feed)
        if payload is self.payload and reason == self.reason:
            return
        self.payload, self.reason = payload, reason
        empty = self.query_one("#modules-empty", Static)
        advice_box = self.query_one("#modules-advice-box")
        self.table.display = payload is not None
        empty.display = payload is None
        if payload is None:
            empty.update(Text(f"No module figures: {reason}."))
            advice_box.display = False
            self._caption()
            return
        self.table.show(payload)
        lines = advice_lines(payload, max(self.size.width - 3, 20))
        advice_box.display = bool(lines)
        self.query_one("#modules-advice", Static).update(Text("\n".join(lines)))
        self._caption()

    def on_resize(self) -> None:
        """Wrap the caption and the advice again at the new width."""
        if not hasattr(self, "table"):
            return
        self.payload, self.reason = None, ""
        self.update_from_feed()

    def _caption(self) -> None:
        text = "Modules"
        if self.payload is not None:
            text += f" · {caption(self.payload)} · sorted: {SORT_LABELS[self.table.sort]}"
        self.query_one("#modules-caption", Static).update(Text(text))

    def action_sort(self) -> None:
        """Cycle the sort: module order, largest total, largest activations."""
        if self.payload is not None:
            self.table.cycle_sort()
            self._caption()

    def action_open_layer(self) -> None:
        """Open the layer under the cursor into its parts (attention, MLP, norms, LoRA, other), or close it."""
        if self.payload is not None:
            self.table.toggle_layer()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on the table (the table's own binding): open or close the layer."""
        event.stop()
        self.action_open_layer()

    def action_close(self) -> None:
        """Back to the dashboard."""
        self.dismiss(None)
