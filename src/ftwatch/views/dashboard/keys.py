"""The dashboard's keys: its bindings, which of them apply (:meth:`DashboardKeys.check_action`),
and their actions: quit, detach, the stop of the training (asked once, then an offer to terminate),
pause, a replay's keys, a multi-process run's rank keys, the log, the module view, the screenshot and the help.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from textual.binding import Binding

from ftwatch.views.dashboard.modules_screen import ModulesScreen
from ftwatch.views.dashboard.multi_feed import MultiRunFeed
from ftwatch.views.dashboard.refresh import DashboardRefresh
from ftwatch.views.dashboard.replay import ReplayFeed
from ftwatch.views.dashboard.run_view import RunView
from ftwatch.views.dashboard.screens import ConfirmStopScreen, HelpScreen, QuitScreen, TerminateScreen
from ftwatch.views.dashboard.worker_tail import WORKER_LOG

#: The keys of a replay (hidden on a live run).
REPLAY_ACTIONS = ("play_pause", "step", "jump", "rate")
#: What ``f`` shows of the warnings panel, by what the panel holds (``less``: it is open).
REPORT_LABELS = {"fixes": "Fixes", "summary": "Summary", "more": "More", "less": "Less"}
#: The keys of a multi-process run (hidden for a single process).
RANK_ACTIONS = ("focus_rank", "follow_worst")
RANK_KEYS = Binding.Group("Rank")


class DashboardKeys(DashboardRefresh):
    """The keys of the dashboard and what they do."""

    BINDINGS = [
        Binding("q", "quit_dashboard", "Quit"),
        Binding("d", "detach", "Detach"),
        Binding("k", "stop_training", "Stop"),
        # One key, the label of what it does now (check_action shows one of each pair).
        Binding("space", "toggle_pause", "Pause"),
        Binding("space", "toggle_pause('resume')", "Resume"),
        # A replay's keys; priority over the warnings panel's scrolling (only in a replay).
        Binding("space", "play_pause", "Pause"),
        Binding("space", "play_pause('play')", "Play"),
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
        # The warnings panel (post-mortem, summary) given the room: shown when it has more than fits.
        *(Binding("f", f"toggle_report('{what}')", label) for what, label in REPORT_LABELS.items()),
        Binding("l", "toggle_log", "Log"),
        Binding("m", "modules", "Modules"),
        Binding("s", "screenshot", "Screenshot"),
        Binding("question_mark", "help", "Help"),
        Binding("ctrl+c", "quit_dashboard", "Quit", show=False, priority=True),
        Binding("ctrl+q", "quit_dashboard", "Quit", show=False, priority=True),
    ]

    # Set by the app's constructor (FtwatchApp.__init__).
    replay: bool
    user_stopped: bool
    report_overflows: bool

    # -- keys --------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Hide the keys that do not apply: no stop or detach in a replay or after the end; the
        replay's keys only in a replay; none of them over the module view (it has its own)."""
        if isinstance(self.screen, ModulesScreen):
            return action == "quit_dashboard"
        if action in ("detach", "stop_training"):
            return self.live
        if action in RANK_ACTIONS:
            return self.multi
        if action == "play_pause":
            return self.replay and (parameters == ("play",)) != self._replay_playing()
        if action in REPLAY_ACTIONS:
            return self.replay
        if action == "toggle_pause":
            return not self.replay and (parameters == ("resume",)) == self.paused
        if action == "toggle_report":
            return parameters == (self.report_key(),)
        return True

    def _replay_playing(self) -> bool:
        info = self.view.replay if self.view is not None else None
        return info is not None and info.playing

    def report_key(self) -> str | None:
        """What ``f`` would do now (a key of :data:`REPORT_LABELS`), None when the panel fits."""
        screen = getattr(self, "main_screen", None)
        if screen is not None and screen.has_class("-report-open"):
            return "less"
        if not self.report_overflows:
            return None
        status = (self.view.exit or {}).get("status") if self.view is not None else None
        if status in ("oom", "failed"):
            return "fixes"
        return "summary" if self.view is not None and self.view.ended else "more"

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
        self._tick()

    def action_toggle_pause(self, _label: str = "") -> None:
        """Freeze the display (the data keeps being read, the training is untouched), or resume."""
        self.paused = not self.paused
        self.render_view(self.feed.view() if not self.paused else self._paused_view())
        self.refresh_bindings()

    def _paused_view(self) -> RunView:
        # Pausing redraws the status line only: the rest keeps what was on screen.
        return self.view if self.view is not None else self.feed.view()

    def action_play_pause(self, _label: str = "") -> None:
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

    def action_toggle_report(self, _label: str = "") -> None:
        """Give the warnings panel (post-mortem, summary) the room below the phases, or shrink it back;
        open, it has the focus, so the arrow keys scroll it."""
        if self._modal_open():
            return
        screen = self.main_screen
        screen.set_class(False, "-log-open")
        self.w_log_box.border_title = f"Worker log · {WORKER_LOG}  (l: more)"
        screen.toggle_class("-report-open")
        if screen.has_class("-report-open"):
            self.w_alerts_box.focus()
        else:
            screen.set_focus(None)
        self.w_alerts_box.scroll_home(animate=False)
        self._shown_version = -1
        self.call_after_refresh(self._tick)
        self.refresh_bindings()

    def action_toggle_log(self) -> None:
        """Give the worker's output most of the screen, or shrink it back."""
        if self.main_screen.has_class("-report-open"):
            self.action_toggle_report()
        self.main_screen.toggle_class("-log-open")
        self.w_log_box.border_title = (
            f"Worker log · {WORKER_LOG}  (l: less)" if self.main_screen.has_class("-log-open")
            else f"Worker log · {WORKER_LOG}  (l: more)")

    def action_modules(self) -> None:
        """Open the module view: where inside the model the memory is (the last modules event)."""
        if not self._modal_open():
            self.push_screen(ModulesScreen(self.feed))

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
