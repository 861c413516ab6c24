"""The dashboard's refresh: :meth:`DashboardRefresh._tick` takes a
:class:`~ftwatch.views.dashboard.run_view.RunView` from the feed when its version moved, and
:meth:`DashboardRefresh.render_view` draws it on every widget (the timeline at its own, slower
cadence). A live feed tells the app when it has something to draw (:class:`FeedChanged`, posted from
its thread); a clock once a second keeps the status line's clocks moving. A replay, whose keys move
the feed from this thread, is drawn by a timer at ``render_hz``. A drawing bug is reported once and
never takes the dashboard (or the run) down.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.markup import escape
from textual import on
from textual.message import Message
from textual.widget import Widget

from ftwatch.views.dashboard.breakdown import Breakdown, compute_breakdown
from ftwatch.views.dashboard.layout import TALL_FROM, WIDE_FROM, DashboardLayout
from ftwatch.views.dashboard.run_view import RunView
from ftwatch.views.dashboard.screens import ConfirmStopScreen
from ftwatch.views.dashboard.titles import alerts_title, memory_title, rank_suffix
from ftwatch.views.dashboard.widgets.alerts import alerts_text
from ftwatch.views.dashboard.widgets.outside import outside_notice
from ftwatch.views.dashboard.widgets.panel import Panel
from ftwatch.views.dashboard.widgets.phases import phase_cells
from ftwatch.views.dashboard.widgets.ranks import ranks_title
from ftwatch.views.dashboard.widgets.status import status_lines
from ftwatch.views.dashboard.widgets.timeline import build_series, legend_text

if TYPE_CHECKING:
    from ftwatch.runlog.sources import WorkerHandle


#: A live run whose only news is device samples (ten a second) is redrawn at most this often; a step,
#: a phase, a warning or an end is drawn at the next tick. (Most of a redraw's cost is Textual composing
#: the changed lines: at 8 redraws a second, following a 10 Hz run took 5% of a core; see benchmarks/dashboard.py.)
SAMPLES_ONLY_INTERVAL = 0.5
#: A live dashboard's clock: what it shows that moves by itself (elapsed time, "no data for", "stop
#: requested ... ago") is redrawn this often; the rest is drawn when the feed tells it.
CLOCK_INTERVAL = 1.0
#: A screen with nothing new is redrawn when this long has passed since the last redraw (for those clocks).
REDRAW_AFTER = 0.9


class FeedChanged(Message):
    """The feed has something new to draw (posted from the feed's thread). One waiting in the queue
    stands for any number: a newer one replaces it."""

    def can_replace(self, message: Message) -> bool:
        """Another change of the feed supersedes this one (the app draws the feed as it is then)."""
        return isinstance(message, FeedChanged)


class DashboardRefresh(DashboardLayout):
    """Draws what the feed has on the layout's widgets, at most ``render_hz`` times a second."""

    # Set by the app's constructor (FtwatchApp.__init__), or its properties.
    handle: WorkerHandle | None
    replay: bool
    render_interval: float
    run_title: str | None
    plot_interval: float
    paused: bool
    quit_when_stopped: bool
    renders: int
    view: RunView | None
    breakdown: Breakdown
    render_error: Exception | None
    _plot_focus: int | None
    _ranks_focus: int | None
    _plot_after: int | None
    _last_render: float
    _last_plot: float
    _plot_version: int
    _ended_shown: bool
    _live_shown: bool | None
    _bindings_shown: tuple[object, ...] | None
    report_overflows: bool
    report_key: Callable[[], str | None]
    mono: bool
    live: bool

    # -- rendering ---------------------------------------------------------------------------
    def _start_drawing(self) -> None:
        """Once mounted: a live feed tells the app what to draw (the clock keeps the clocks moving); a
        replay's feed is drawn by a timer at ``render_hz``."""
        if self.replay:
            self.set_interval(self.render_interval, self._tick)
        else:
            self.feed.watch(lambda: self.post_message(FeedChanged()), SAMPLES_ONLY_INTERVAL)
            self.set_interval(CLOCK_INTERVAL, self._tick)
        self.call_after_refresh(self._tick)

    @on(FeedChanged)
    def _feed_changed(self) -> None:
        self._tick()

    def _tick(self) -> None:
        """Redraw what changed (told by the feed, or on a timer): a live run's device samples alone at
        most every ``SAMPLES_ONLY_INTERVAL``, an unchanged screen every ``REDRAW_AFTER``."""
        if self.quit_when_stopped and (self.feed.ended or self.feed.worker_alive is False):
            self.exit("stopped")
            return
        if self.paused:
            return
        now = time.monotonic()
        version = self.feed.version
        since = now - self._last_render
        if version == self._shown_version and since < REDRAW_AFTER:
            return
        if since < SAMPLES_ONLY_INTERVAL and self.handle is not None and self._only_samples(version):
            return  # a live run's samples alone: coalesced to a few redraws a second (a step shows at once)
        try:
            self.render_view(self.feed.view(), now)
        except Exception as exc:  # a drawing bug must not take the dashboard (or the run) down
            if self.render_error is None:
                self.notify(f"display error: {type(exc).__name__}: {exc}", severity="error", timeout=10)
            self.render_error = exc

    def _only_samples(self, version: int) -> bool:
        """The feed's changes since the shown view came of device samples alone."""
        only = getattr(self.feed, "only_samples_since", None)
        return bool(only is not None and version != self._shown_version and only(self._shown_version))

    def render_view(self, view: RunView, now: float | None = None) -> None:
        """Draw ``view`` on every widget (each widget skips the redraw when its content is the same)."""
        now = time.monotonic() if now is None else now
        self.view = view
        self._shown_version = view.version
        self._last_render = now
        self.renders += 1
        self._refresh_keys()
        tall = self.size.height >= TALL_FROM
        width = self.size.width
        # 80x24 and the like: an ended run's worker log gives its rows to the verdict (l brings it back).
        self.main_screen.set_class(view.ended and not tall, "-fold")
        self.w_status.show(status_lines(view, max(width - 2, 20), paused=self.paused,
                                                     live=self.handle is not None, title=self.run_title,
                                                     now=now, mono=self.mono))
        if isinstance(self.screen, ConfirmStopScreen):
            self.screen.follow(view.step, view.max_steps, view.run_ended)
        if view.ranks is not None:
            self._show_ranks(view, compact=not (tall and width >= WIDE_FROM))
        bd = compute_breakdown(view)
        self.breakdown = bd
        self.w_bar.show(bd, rows=2 if tall else 1, mono=self.mono)
        memory = self.w_memory
        memory.set_class(bd.needs_zoom, "-zoom")
        if bd.needs_zoom:
            self.w_zoom.show(bd, mono=self.mono)
        self.w_legend.show(bd, view.peaks, mono=self.mono, max_rows=4 if tall else 3)
        _set_title(memory, escape(memory_title(view, bd)))
        status = view.exit.get("status") if view.exit else None
        self._show_outside(view)
        self.w_phases.show(
            phase_cells(view.phases, view.phase, status, view.capacity, view.timeline[-1].t if view.timeline else None,
                        origin=view.header.get("origin")),
            rows=3 if tall else 2)
        self.w_alerts.show(alerts_text(view))
        self._title_alerts()
        self.call_after_refresh(self._check_report_fold)
        self.w_log.show(view.log_lines, view.log_version, view.log_exists, view.header)
        plot_due = now - self._last_plot >= self.plot_interval
        if self._plot_after is not None and view.version > self._plot_after:  # a replay key: at once
            plot_due, self._plot_after = True, None
        ended_now = view.ended and not self._ended_shown
        focus = view.ranks.focus if view.ranks is not None else None
        if (plot_due and view.version != self._plot_version) or ended_now or self._plot_width != width \
                or focus != self._plot_focus:
            self._draw_timeline(view, bd, width)
            self._last_plot = now
            self._plot_version = view.version
            self._plot_width = width
            self._ended_shown = view.ended
            self._plot_focus = focus

    def _refresh_keys(self) -> None:
        """Redraw the footer when the keys that apply, or their labels, change: stop and detach
        come and go with the worker, space says what it does now, f shows when the panel overflows."""
        replay = self.view.replay if self.view is not None else None
        shown = (self.live, self.paused, replay is not None and replay.playing, self.report_key())
        if shown != self._bindings_shown:
            self._bindings_shown = shown
            self._live_shown = self.live
            self.refresh_bindings()

    def _check_report_fold(self) -> None:
        """Once laid out: does the warnings panel hold more than it shows? (f, and a hint in its title)"""
        overflows = self.w_alerts_box.max_scroll_y > 0
        if overflows != self.report_overflows:
            self.report_overflows = overflows
            self._title_alerts()
            self._refresh_keys()

    def _title_alerts(self) -> None:
        if self.view is None:
            return
        box = self.w_alerts_box
        title = alerts_title(self.view, width=box.size.width - 2, overflows=self.report_overflows,
                             opened=self.main_screen.has_class("-report-open"))
        _set_title(box, escape(title))

    def _show_ranks(self, view: RunView, compact: bool) -> None:
        """A multi-process run: the rank rows, and the focused rank named in the panel titles."""
        ranks = view.ranks
        assert ranks is not None
        self.w_ranks.show(ranks, mono=self.mono, compact=compact)
        _set_title(self.w_ranks_box, escape(ranks_title(ranks)))
        suffix = rank_suffix(view)
        _set_title(self.w_phase_box, ("Not instrumented" if view.external else "Phases") + suffix)
        _set_title(self.w_timeline_box, "Timeline" + suffix)
        if ranks.focus != self._ranks_focus:
            self._ranks_focus = ranks.focus
            index = next((i for i, row in enumerate(ranks.rows) if row.rank == ranks.focus), 0)
            self.call_after_refresh(self.w_ranks_box.keep_visible, index)

    def _show_outside(self, view: RunView) -> None:
        """A process watched from outside: the phase strip gives way to the no-breakdown notice."""
        external = view.external
        if external == self.main_screen.has_class("-external"):
            return
        self.main_screen.set_class(external, "-external")
        _set_title(self.w_phase_box, "Not instrumented" if external else "Phases")
        self.w_notice.update(outside_notice(view) if external else "")

    def _draw_timeline(self, view: RunView, bd: Breakdown, width: int) -> None:
        plot = self.w_plot
        plot_width = plot.content_size.width or width
        series = build_series(view.timeline, view.phases, view.capacity, bd.threshold, view.is_cuda, plot_width,
                              t0=view.header.get("t"), limit_label=bd.threshold_label, tensors=not view.external)
        legend = legend_text(series, view.capacity, self.mono, width=self.w_plot_legend.content_size.width or plot_width)
        shown = getattr(self, "_plot_legend", None)
        if legend != shown:
            self._plot_legend = legend
            resized = shown is None or shown.plain.count("\n") != legend.plain.count("\n")
            self.w_plot_legend.update(legend, layout=resized)  # one line, two when one cannot hold it
        plot.show(series, mono=self.mono)


def _set_title(widget: Widget, title: str) -> None:
    """Set a border title only when it changes (a :class:`Panel` repaints its title row alone; any
    other widget, the whole of itself)."""
    if isinstance(widget, Panel):
        widget.set_title(title)
    elif widget.border_title != title:
        widget.border_title = title
