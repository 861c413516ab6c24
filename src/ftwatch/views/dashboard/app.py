"""The ftwatch dashboard (Textual): follow a run's log, draw its memory, stop or detach on request.

:func:`run_dashboard` is what the command line calls; :class:`FtwatchApp` is the app (tests drive
it with ``App.run_test()``). A background thread (:class:`~ftwatch.views.dashboard.feed.RunFeed`) reads the
files and folds the events (for a replay, :class:`~ftwatch.views.dashboard.replay.ReplayFeed` releases them by
their time instead); a timer redraws at most ``render_hz`` times a second, and only what changed.
A multi-process (torchrun) run directory is followed by :class:`~ftwatch.views.dashboard.multi_feed.MultiRunFeed`:
the ranks panel lists every rank, the other panels show the focused rank (``[``/``]``/``w``).
Nothing here can slow the training: the training process only appends to its log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from rich.markup import escape
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widget import Widget
from textual.widgets import Footer, Static

from ftwatch.runlog.ranks import is_multi_rank_dir
from ftwatch.runlog.sources import WorkerHandle
from ftwatch.views.dashboard import fmt
from ftwatch.views.dashboard.breakdown import Breakdown, compute_breakdown
from ftwatch.views.dashboard.feed import WORKER_LOG, RunFeed, RunView
from ftwatch.views.dashboard.multi_feed import MultiRunFeed
from ftwatch.views.dashboard.replay import ReplayFeed
from ftwatch.views.dashboard.screens import ConfirmStopScreen, HelpScreen, QuitScreen, TerminateScreen
from ftwatch.views.dashboard.widgets.alerts import AlertsPanel, alerts_text
from ftwatch.views.dashboard.widgets.membar import Legend, MemoryBar, ZoomBar
from ftwatch.views.dashboard.widgets.outside import outside_notice
from ftwatch.views.dashboard.widgets.phases import PhaseStrip, phase_cells
from ftwatch.views.dashboard.widgets.ranks import RanksBox, RanksList, ranks_title
from ftwatch.views.dashboard.widgets.status import StatusLine, status_lines
from ftwatch.views.dashboard.widgets.timeline import TimelinePlot, build_series, legend_text
from ftwatch.views.dashboard.widgets.worklog import WorkerLog

#: How ``run_dashboard`` can end.
ENDINGS = ("stopped", "detached", "quit")
#: The keys of a replay (hidden on a live run).
REPLAY_ACTIONS = ("play_pause", "step", "jump", "rate")
#: The keys of a multi-process run (hidden for a single process).
RANK_ACTIONS = ("focus_rank", "follow_worst")
RANK_KEYS = Binding.Group("Rank")

TALL_FROM = 32
WIDE_FROM = 110


class FtwatchApp(App[str]):
    """The dashboard of one run. ``handle`` is None for the replay of a finished log (``feed`` is
    then a :class:`~ftwatch.views.dashboard.replay.ReplayFeed`, which adds the replay's keys) and for a process
    watched from outside (``attach PID`` without a probe: the no-breakdown view).

    ``log_path`` may also be the run directory of a multi-process run (``launch.json``,
    ``rankN/events.jsonl``): it is then followed by a :class:`~ftwatch.views.dashboard.multi_feed.MultiRunFeed`
    (``handle``: the launcher's, or None for a replay, shown at its end), the ranks panel shows
    every rank and ``[``, ``]`` and ``w`` pick the rank the other panels show."""

    CSS_PATH = "app.tcss"
    ENABLE_COMMAND_PALETTE = False
    TITLE = "ftwatch"
    BINDINGS = [
        Binding("q", "quit_dashboard", "Quit"),
        Binding("d", "detach", "Detach"),
        Binding("k", "stop_training", "Stop training"),
        Binding("space", "toggle_pause", "Pause"),
        # A replay's keys; priority over the warnings panel's scrolling (only in a replay).
        Binding("space", "play_pause", "Play/pause"),
        Binding("left", "step(-1)", "Back", priority=True),
        Binding("right", "step(1)", "Step", priority=True),
        Binding("home", "jump('start')", "Start", priority=True, show=False),
        Binding("end", "jump('end')", "End", priority=True, show=False),
        Binding("plus,equals_sign", "rate(1)", "Faster", show=False),
        Binding("minus", "rate(-1)", "Slower", show=False),
        # A multi-process run's keys: which rank the panels show.
        Binding("left_square_bracket", "focus_rank(-1)", "Previous rank", group=RANK_KEYS),
        Binding("right_square_bracket", "focus_rank(1)", "Next rank", group=RANK_KEYS),
        Binding("w", "follow_worst", "Worst rank", show=False),  # in the help and the ranks panel's title
        Binding("l", "toggle_log", "Log"),
        Binding("s", "screenshot", "Screenshot"),
        Binding("question_mark", "help", "Help"),
        Binding("ctrl+c", "quit_dashboard", "Quit", show=False, priority=True),
        Binding("ctrl+q", "quit_dashboard", "Quit", show=False, priority=True),
    ]

    def __init__(self, log_path: str | Path, handle: WorkerHandle | None = None, *, title: str | None = None,
                 render_hz: float = 8.0, plot_hz: float = 1.0, feed: RunFeed | None = None) -> None:
        super().__init__()
        self.log_path = Path(log_path)
        self.handle = handle
        self.run_title = title
        if title:
            self.title = f"ftwatch: {title}"
        if feed is None and is_multi_rank_dir(self.log_path):
            feed = MultiRunFeed(self.log_path, handle)
        self.feed = feed or RunFeed(self.log_path, handle)
        self.replay = isinstance(self.feed, ReplayFeed)
        self.multi = isinstance(self.feed, MultiRunFeed)
        self._plot_focus: int | None = None
        self._ranks_focus: int | None = None
        self._plot_after: int | None = None
        self.render_interval = 1.0 / max(render_hz, 0.5)
        self.plot_interval = 1.0 / max(plot_hz, 0.1)
        self.paused = False
        self.user_stopped = False
        self.quit_when_stopped = False
        self.renders = 0
        self.view: RunView | None = None
        self.breakdown = Breakdown()
        self._shown_version = -1
        self._last_render = 0.0
        self._last_plot = 0.0
        self._plot_version = -1
        self._plot_width = -1
        self._ended_shown = False
        self.render_error: Exception | None = None
        self._live_shown: bool | None = None

    # -- layout ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        """Status, ranks (multi-process runs), memory bar and legend, phases, timeline beside
        warnings, worker log, keys."""
        yield StatusLine(id="status")
        with RanksBox(id="ranks-box", classes="panel"):
            yield RanksList(id="ranks")
        with Vertical(id="memory", classes="panel"):
            yield MemoryBar(id="bar")
            yield ZoomBar(id="zoom")
            yield Legend(id="legend")
        with Vertical(id="phase-box", classes="panel"):
            yield PhaseStrip(id="phases")
            yield Static(id="notice")
        with Horizontal(id="middle"):
            with Vertical(id="timeline-box", classes="panel"):
                yield Static(id="timeline-legend")
                yield TimelinePlot(id="timeline")
            with VerticalScroll(id="alerts-box", classes="panel"):
                yield AlertsPanel(id="alerts")
        with Vertical(id="log-box", classes="panel"):
            yield WorkerLog(id="worklog")
        yield Footer()

    def on_mount(self) -> None:
        """Start following the run and the render timer."""
        # Keep the widgets: while a question is on screen, queries would search the question's screen.
        self.w_status = self.query_one(StatusLine)
        self.w_bar = self.query_one(MemoryBar)
        self.w_zoom = self.query_one(ZoomBar)
        self.w_legend = self.query_one(Legend)
        self.w_memory = self.query_one("#memory")
        self.w_phases = self.query_one(PhaseStrip)
        self.w_phase_box = self.query_one("#phase-box")
        self.w_notice = self.query_one("#notice", Static)
        self.w_alerts_box = self.query_one("#alerts-box")
        self.w_alerts = self.query_one(AlertsPanel)
        self.w_log_box = self.query_one("#log-box")
        self.w_log = self.query_one(WorkerLog)
        self.w_plot = self.query_one(TimelinePlot)
        self.w_plot_legend = self.query_one("#timeline-legend", Static)
        self.w_timeline_box = self.query_one("#timeline-box")
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
        self.feed.start()
        self.set_interval(self.render_interval, self._tick)
        self.call_after_refresh(self._tick)

    def on_unmount(self) -> None:
        """Stop the reader thread."""
        self.feed.stop()

    def on_resize(self) -> None:
        """Switch between the compact and the roomy layout; redraw everything at the new size."""
        self._apply_size_classes()
        self._shown_version = -1
        self._plot_width = -1

    def _apply_size_classes(self) -> None:
        width, height = self.size
        screen = getattr(self, "main_screen", None) or self.screen
        screen.set_class(height >= TALL_FROM, "-tall")
        screen.set_class(width >= WIDE_FROM, "-wide")

    @property
    def mono(self) -> bool:
        """True under ``NO_COLOR``: the bar uses glyphs instead of colours."""
        return bool(self.no_color)

    @property
    def live(self) -> bool:
        """True while a training process is attached and has not ended."""
        return (self.handle is not None and not self.feed.ended
                and self.feed.worker_alive is not False)

    # -- rendering ---------------------------------------------------------------------------
    def _tick(self) -> None:
        """The render timer: redraw what changed, at most ``render_hz`` times a second."""
        if self.quit_when_stopped and (self.feed.ended or self.feed.worker_alive is False):
            self.exit("stopped")
            return
        if self.paused:
            return
        now = time.monotonic()
        version = self.feed.version
        if version == self._shown_version and now - self._last_render < 1.0:
            return
        try:
            self.render_view(self.feed.view(), now)
        except Exception as exc:  # a drawing bug must not take the dashboard (or the run) down
            if self.render_error is None:
                self.notify(f"display error: {type(exc).__name__}: {exc}", severity="error", timeout=10)
            self.render_error = exc

    def render_view(self, view: RunView, now: float | None = None) -> None:
        """Draw ``view`` on every widget (each widget skips the redraw when its content is the same)."""
        now = time.monotonic() if now is None else now
        self.view = view
        self._shown_version = view.version
        self._last_render = now
        self.renders += 1
        if self.live != self._live_shown:  # stop/detach come and go with the worker
            self._live_shown = self.live
            self.refresh_bindings()
        tall = self.size.height >= TALL_FROM
        width = self.size.width
        self.w_status.show(status_lines(view, max(width - 2, 20), paused=self.paused,
                                                     live=self.handle is not None, title=self.run_title,
                                                     now=now, mono=self.mono))
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
            phase_cells(view.phases, view.phase, status, view.capacity, view.timeline[-1].t if view.timeline else None),
            rows=3 if tall else 2)
        alerts_box = self.w_alerts_box
        _set_title(alerts_box, alerts_title(view))
        self.w_alerts.show(alerts_text(view))
        self.w_log.show(view.log_lines, view.log_version, view.log_exists)
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
        legend = legend_text(series, view.capacity, self.mono)
        if legend != getattr(self, "_plot_legend", None):
            self._plot_legend = legend
            self.w_plot_legend.update(legend, layout=False)  # one line, always
        plot.show(series, mono=self.mono)

    # -- keys --------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Hide the keys that do not apply: no stop or detach in a replay or after the end; the
        replay's keys only in a replay."""
        if action in ("detach", "stop_training"):
            return self.live
        if action in REPLAY_ACTIONS:
            return self.replay
        if action in RANK_ACTIONS:
            return self.multi
        if action == "toggle_pause":
            return not self.replay
        return True

    def _modal_open(self) -> bool:
        return len(self.screen_stack) > 1

    def action_quit_dashboard(self) -> None:
        """Quit; while the training runs, ask whether to stop it or leave it running."""
        if isinstance(self.screen, QuitScreen):  # asked twice (q is the screen's own; this is ctrl+c)
            self.screen.dismiss("detach")
            return
        if self._modal_open():
            return
        if self.quit_when_stopped:
            self.exit("stopped")
        elif self.live:
            self.push_screen(QuitScreen(), self._after_quit_question)
        else:
            self.exit("stopped" if self.user_stopped else "quit")

    def _after_quit_question(self, choice: str | None) -> None:
        if choice == "detach":
            self.exit("detached")
        elif choice == "stop":
            self._request_stop()
            if not self.live:
                self.exit("stopped")
                return
            self.quit_when_stopped = True
            self.notify("Stopping at the next step; the dashboard closes when the worker has ended "
                        "(q again closes it now).", title="Stop requested", timeout=8)

    def action_detach(self) -> None:
        """Leave the dashboard; the training goes on."""
        if self._modal_open():
            return
        if self.live:
            self.exit("detached")
        elif self.handle is None:
            self.notify("This is a replay: there is no training to detach from.", timeout=4)
        else:
            self.exit("stopped" if self.user_stopped else "quit")

    def action_stop_training(self) -> None:
        """Ask (once) and stop the training cleanly at the next step boundary."""
        if self._modal_open() or not self.live:
            return
        if self.feed.stop_requested_at is not None:
            self.push_screen(TerminateScreen(), self._after_terminate_question)
            return
        self.push_screen(ConfirmStopScreen(self.feed.state.step, self.feed.state.max_steps), self._after_confirm)

    def _after_confirm(self, yes: bool | None) -> None:
        if yes:
            self._request_stop()
            self.notify("The worker stops at the next step boundary and writes its summary.",
                        title="Stop requested", timeout=6)

    def _after_terminate_question(self, yes: bool | None) -> None:
        if yes and self.handle is not None:
            self.handle.terminate()
            self.notify("Sent SIGTERM to the worker.", timeout=4)

    def _request_stop(self) -> None:
        self.user_stopped = True
        self.feed.request_stop()
        self._shown_version = -1

    def action_toggle_pause(self) -> None:
        """Freeze the display (the data keeps being read, the training is untouched)."""
        self.paused = not self.paused
        self.render_view(self.feed.view() if not self.paused else self._paused_view())

    def _paused_view(self) -> RunView:
        # Pausing redraws the status line only: the rest keeps what was on screen.
        return self.view if self.view is not None else self.feed.view()

    def action_play_pause(self) -> None:
        """Replay: stop or start the replay's clock (at the end: play again from the start)."""
        self._replay_key(lambda feed: feed.toggle_play())

    def action_step(self, direction: int) -> None:
        """Replay: pause at the end of the next or the previous training step."""
        self._replay_key(lambda feed: feed.step(direction))

    def action_jump(self, where: str) -> None:
        """Replay: pause at the start of the run, or go to its end."""
        self._replay_key(lambda feed: feed.jump(where))

    def action_rate(self, direction: int) -> None:
        """Replay: play faster or slower."""
        self._replay_key(lambda feed: feed.change_rate(direction))

    def _replay_key(self, command: Callable[[ReplayFeed], None]) -> None:
        if self._modal_open() or not isinstance(self.feed, ReplayFeed):
            return
        self._plot_after = self.feed.version  # redraw the timeline as soon as the feed has moved
        command(self.feed)

    def action_focus_rank(self, direction: int) -> None:
        """Multi-process run: show the next (``1``) or previous (``-1``) rank in the panels."""
        if self._modal_open() or not isinstance(self.feed, MultiRunFeed):
            return
        self.feed.focus_step(direction)
        self._tick()

    def action_follow_worst(self) -> None:
        """Multi-process run: show the worst rank again, and follow it as it changes."""
        if self._modal_open() or not isinstance(self.feed, MultiRunFeed):
            return
        self.feed.follow_worst()
        self._tick()

    def action_toggle_log(self) -> None:
        """Give the worker's output most of the screen, or shrink it back."""
        self.main_screen.toggle_class("-log-open")
        self.w_log_box.border_title = (
            f"Worker log · {WORKER_LOG}  (l: less)" if self.main_screen.has_class("-log-open")
            else f"Worker log · {WORKER_LOG}  (l: more)")

    def action_screenshot(self) -> None:
        """Save an SVG of the screen into the run directory (else the current directory)."""
        name = f"ftwatch-{datetime.now().strftime('%Y%m%d-%H%M%S')}.svg"
        for folder in (self.feed.run_dir, Path.cwd()):
            try:
                path = self.save_screenshot(filename=name, path=str(folder))
            except OSError:
                continue
            self.notify(f"Saved {path}", title="Screenshot", timeout=5)
            return
        self.notify("Could not write the screenshot.", severity="error", timeout=5)

    def action_help(self) -> None:
        """Show the keys and what the colours mean."""
        if not self._modal_open():
            self.push_screen(HelpScreen(replay=self.replay, ranks=self.multi))


def _set_title(widget: Widget, title: str) -> None:
    """Set a border title only when it changes (setting it repaints the whole panel)."""
    if widget.border_title != title:
        widget.border_title = title


def rank_suffix(view: RunView) -> str:
    """`` · rank 1`` in a multi-process run's panel titles (the focused rank); else nothing."""
    if view.ranks is None or view.ranks.focus is None:
        return ""
    return f" · rank {view.ranks.focus}"


def memory_title(view: RunView, bd: Breakdown) -> str:
    """The memory panel's title: how much is used of what, and what is left."""
    memory = "Memory" + rank_suffix(view)
    if not bd.parts:
        return memory
    where = {"snapshot": f"step {view.step}" if view.phase == "training" else "phase end",
             "live": "live", "oom": "at the failure", "outside": "no breakdown"}.get(bd.source, "")
    device = view.device
    if view.is_cuda:
        free = next((p.bytes for p in bd.parts if p.name == "free"), None)
        head = f"{memory} · GPU {device.get('index', 0)} · {fmt.size(bd.used)} of {fmt.size(bd.scale)}"
        head += f" ({fmt.share(bd.share(bd.used))})"
        if free is not None:
            head += f" · free {fmt.size(free)}"
    else:
        head = f"{memory} · RSS {fmt.size(bd.used)} of {fmt.size(bd.scale)} {bd.capacity_label}"
        head += f" ({fmt.share(bd.share(bd.used))})"
        if bd.source != "outside":
            head += f" · tensors {fmt.size(bd.tensor_total)}"
    return f"{head} · {where}" if where else head


def alerts_title(view: RunView) -> str:
    """The warnings panel's title (naming the focused rank of a multi-process run)."""
    status = (view.exit or {}).get("status")
    if status in ("oom", "failed"):
        title = "Post-mortem"
    elif view.ended:
        title = "Summary"
    else:
        title = f"Warnings ({len(view.warnings)})" if view.warnings else "Warnings"
    return title + rank_suffix(view)


def run_dashboard(log_path: Path, handle: WorkerHandle | None, *, title: str | None = None,
                  feed: RunFeed | None = None) -> str:
    """Run the dashboard in this terminal until the user leaves; returns how it ended.

    ``"stopped"``: the user asked to stop the training (the worker is gone or was signalled);
    ``"detached"``: the user left and the training goes on; ``"quit"``: the worker had already
    ended (or this was a replay) and the user quit. A dashboard that dies for any other reason
    never stops the training: it reports ``"detached"`` while the worker still runs. ``feed``
    replaces the default reader (a :class:`~ftwatch.views.dashboard.replay.ReplayFeed` plays a recorded log).

    ``log_path`` may be the run directory of a multi-process run, with the launcher's handle (its
    ranks are followed, a vanished rank is recorded) or None (the recorded run at its end): it is
    always read by a :class:`~ftwatch.views.dashboard.multi_feed.MultiRunFeed` (a ``feed`` of another kind,
    never started, is dropped: there is no playback of a multi-process run).
    """
    if feed is not None and not isinstance(feed, MultiRunFeed) and is_multi_rank_dir(log_path):
        feed = None
    app = FtwatchApp(log_path, handle, title=title, feed=feed)
    result: str | None
    try:
        result = app.run()
    except Exception:  # the viewer failing must not cost the run: report what the worker is doing
        result = None
    if result in ENDINGS:
        return result
    if handle is not None and handle.is_alive():
        return "detached"
    return "stopped" if app.user_stopped else "quit"
