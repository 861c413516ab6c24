"""The dashboard's layout: its panels (:meth:`DashboardLayout.compose`), the widgets it keeps and
titles once mounted, and the CSS classes that ``app.tcss`` switches on (``-tall``, ``-wide``,
``-multi``; ``-external`` and ``-log-open`` are set by the refresh and the keys).

:class:`DashboardLayout` is the first part of :class:`~ftwatch.views.dashboard.app.FtwatchApp`; the
render timer it starts is :class:`~ftwatch.views.dashboard.refresh.DashboardRefresh`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from textual.app import App, ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Footer, Static

from ftwatch.views.dashboard.widgets.alerts import AlertsPanel
from ftwatch.views.dashboard.widgets.membar import Legend, MemoryBar, ZoomBar
from ftwatch.views.dashboard.widgets.panel import Panel
from ftwatch.views.dashboard.widgets.phases import PhaseStrip
from ftwatch.views.dashboard.widgets.ranks import RanksBox, RanksList
from ftwatch.views.dashboard.widgets.status import StatusLine
from ftwatch.views.dashboard.widgets.timeline import TimelinePlot
from ftwatch.views.dashboard.widgets.worklog import WorkerLog
from ftwatch.views.dashboard.worker_tail import WORKER_LOG

if TYPE_CHECKING:
    from ftwatch.views.dashboard.feed import RunFeed

TALL_FROM = 32
WIDE_FROM = 110


class DashboardLayout(App[str]):
    """The panels of the dashboard and the size classes of its screen."""

    # Set by the app's constructor (FtwatchApp.__init__); ``_tick`` draws, ``_start_drawing`` sets it going.
    feed: RunFeed
    multi: bool
    _shown_version: int
    _plot_width: int
    _tick: Callable[[], None]
    _start_drawing: Callable[[], None]

    # -- layout ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        """Status, ranks (multi-process runs), memory bar and legend, phases, timeline beside
        warnings, worker log, keys."""
        yield StatusLine(id="status")
        with RanksBox(id="ranks-box", classes="panel"):
            yield RanksList(id="ranks")
        with Panel(id="memory", classes="panel"):
            yield MemoryBar(id="bar")
            yield ZoomBar(id="zoom")
            yield Legend(id="legend")
        with Panel(id="phase-box", classes="panel"):
            yield PhaseStrip(id="phases")
            yield Static(id="notice")
        with Horizontal(id="middle"):
            with Panel(id="timeline-box", classes="panel"):
                yield Static(id="timeline-legend")
                yield TimelinePlot(id="timeline")
            with VerticalScroll(id="alerts-box", classes="panel"):
                yield AlertsPanel(id="alerts")
        with Vertical(id="log-box", classes="panel"):
            yield WorkerLog(id="worklog")
        yield Footer()

    def on_mount(self) -> None:
        """Start following the run, and drawing it."""
        # Keep the widgets: while a question is on screen, queries would search the question's screen.
        self.w_status = self.query_one(StatusLine)
        self.w_bar = self.query_one(MemoryBar)
        self.w_zoom = self.query_one(ZoomBar)
        self.w_legend = self.query_one(Legend)
        self.w_memory = self.query_one("#memory", Panel)
        self.w_phases = self.query_one(PhaseStrip)
        self.w_phase_box = self.query_one("#phase-box", Panel)
        self.w_notice = self.query_one("#notice", Static)
        self.w_alerts_box = self.query_one("#alerts-box")
        self.w_alerts = self.query_one(AlertsPanel)
        self.w_log_box = self.query_one("#log-box")
        self.w_log = self.query_one(WorkerLog)
        self.w_plot = self.query_one(TimelinePlot)
        self.w_plot_legend = self.query_one("#timeline-legend", Static)
        self.w_timeline_box = self.query_one("#timeline-box", Panel)
        self.w_ranks_box = self.query_one(RanksBox)
        self.w_ranks = self.query_one(RanksList)
        self.main_screen = self.screen
        self.main_screen.set_class(self.multi, "-multi")
        if self.multi:  # the rank keys: the footer drops its padding to keep every key on 80 columns
            self.query_one(Footer).compact = True
        self.w_ranks_box.border_title = "Ranks"
        self.w_memory.border_title = "Memory"
        self.w_phase_box.border_title = "Phases"
        self.query_one("#timeline-box").border_title = "Timeline"
        self.w_alerts_box.border_title = "Warnings"
        self.w_log_box.border_title = f"Worker log · {WORKER_LOG}  (l: more)"
        self._apply_size_classes()
        self._start_drawing()
        self.feed.start()

    def on_unmount(self) -> None:
        """Stop the reader thread."""
        self.feed.stop()

    def on_resize(self) -> None:
        """Switch between the compact and the roomy layout; redraw everything at the new size."""
        self._apply_size_classes()
        self._shown_version = -1
        self._plot_width = -1
        self.call_after_refresh(self._tick)

    def _apply_size_classes(self) -> None:
        width, height = self.size
        screen = getattr(self, "main_screen", None) or self.screen
        screen.set_class(height >= TALL_FROM, "-tall")
        screen.set_class(width >= WIDE_FROM, "-wide")
        for footer in screen.query(Footer):  # narrower, the keys drop their padding: all of them fit 80 columns
            footer.compact = self.multi or width < WIDE_FROM
