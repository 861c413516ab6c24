"""The ftwatch dashboard (Textual): follow a run's log, draw its memory, stop or detach on request.

:func:`run_dashboard` is what the command line calls; :class:`FtwatchApp` is the app (tests drive
it with ``App.run_test()``). A background thread (:class:`~ftwatch.views.dashboard.feed.RunFeed`) reads the
files and folds the events (for a replay, :class:`~ftwatch.views.dashboard.replay.ReplayFeed` releases them by
their time instead). The feed tells the app when there is something to draw (a replay is drawn by a timer at
``render_hz``), and only what changed is redrawn (a live run's device samples alone at most twice a second; the
timeline chart every ``1 / plot_hz`` seconds; a widget repaints only its rows that changed).
A multi-process (torchrun) run directory is followed by :class:`~ftwatch.views.dashboard.multi_feed.MultiRunFeed`:
the ranks panel lists every rank, the other panels show the focused rank (``[``/``]``/``w``).
Nothing here can slow the training: the training process only appends to its log.

The app is built in parts, one concern each: :mod:`~ftwatch.views.dashboard.layout` (the panels and
their size classes), :mod:`~ftwatch.views.dashboard.refresh` (what draws a
:class:`~ftwatch.views.dashboard.run_view.RunView`) and :mod:`~ftwatch.views.dashboard.keys` (the
bindings and their actions, the stop confirmation included); this module holds the app's state and
:func:`run_dashboard`.
"""

from __future__ import annotations

from pathlib import Path

from ftwatch.runlog.ranks import is_multi_rank_dir
from ftwatch.runlog.sources import WorkerHandle
from ftwatch.views.dashboard.breakdown import Breakdown
from ftwatch.views.dashboard.feed import RunFeed
from ftwatch.views.dashboard.keys import DashboardKeys
from ftwatch.views.dashboard.multi_feed import MultiRunFeed
from ftwatch.views.dashboard.replay import ReplayFeed
from ftwatch.views.dashboard.run_view import RunView

#: How ``run_dashboard`` can end.
ENDINGS = ("stopped", "detached", "quit")


class FtwatchApp(DashboardKeys):
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

    def __init__(self, log_path: str | Path, handle: WorkerHandle | None = None, *, title: str | None = None,
                 render_hz: float = 8.0, plot_hz: float = 0.5, feed: RunFeed | None = None) -> None:
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
        self.report_overflows = False  # the warnings panel has more than it shows (f gives it the room)
        self._bindings_shown: tuple[object, ...] | None = None
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

    @property
    def mono(self) -> bool:
        """True under ``NO_COLOR``: the bar uses glyphs instead of colours."""
        return bool(self.no_color)

    @property
    def live(self) -> bool:
        """True while a training process is attached and has not ended."""
        return (self.handle is not None and not self.feed.ended
                and self.feed.worker_alive is not False)


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
