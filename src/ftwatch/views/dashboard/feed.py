"""The dashboard's data side: a background thread that follows the run and folds it into state.

The UI thread never reads a file. :class:`RunFeed` polls the run log (``events.jsonl``) and the
worker's output (``worker.log``) from its own thread, folds the events into a
:class:`~ftwatch.runlog.state.RunState` under a lock and bumps a version number. The app takes a
:class:`~ftwatch.views.dashboard.run_view.RunView` (a consistent copy of what it needs) only when the
version moved. A live dashboard asks to be told (:meth:`RunFeed.watch`): after a round that
changed something worth drawing, the thread calls it back (see
:class:`~ftwatch.views.dashboard.draw_notice.DrawNotice`), so the screen follows at once without a
fast timer, whatever the sample rate. The training side never waits for any of this: it only
appends to its files. The worker's output is followed by a
:class:`~ftwatch.views.dashboard.worker_tail.TextTail`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftwatch.runlog.endings import NO_EXIT_EVENT, record_vanished_worker, signal_name
from ftwatch.runlog.event_reader import ReadStats, SchemaVersionError
from ftwatch.runlog.sources import LogFollower, WorkerHandle
from ftwatch.runlog.state import RunState
from ftwatch.views.dashboard.draw_notice import DrawNotice
from ftwatch.views.dashboard.run_view import ReplayInfo, RunView
from ftwatch.views.dashboard.worker_tail import WORKER_LOG, TextTail

#: What a replay says of a log that ends without an exit event (``error_type`` of its in-memory end).
NO_EXIT = ("the log ends without an exit event: the training process was killed, the log was cut, or the run "
           "goes on elsewhere")


class RunFeed:
    """Follows one run from a background thread; the UI asks it for a :class:`RunView`."""

    def __init__(self, log_path: str | os.PathLike[str], handle: WorkerHandle | None = None, *,
                 poll_interval: float = 0.1, batch_bytes: int = 256 * 1024, timeline_capacity: int = 2048,
                 log_lines: int = 2000, exit_grace: float = 1.5) -> None:
        self.log_path = Path(log_path)
        if self.log_path.is_dir():
            self.log_path = self.log_path / "events.jsonl"
        self.run_dir = self.log_path.parent
        self.handle = handle
        self.poll_interval = poll_interval
        self.batch_bytes = batch_bytes
        self.exit_grace = exit_grace
        self.state = RunState(timeline_capacity=timeline_capacity)
        self.follower = LogFollower(self.log_path)
        self.worker_log = TextTail(self.run_dir / WORKER_LOG, max_lines=log_lines)
        self.lock = threading.Lock()
        self.version = 0
        #: The versions from the first to the second came only of device samples (``(v, v)``: none
        #: did): the dashboard draws such a change at a slower cadence (see :meth:`only_samples_since`).
        self.samples_only: tuple[int, int] = (0, 0)
        self.log_version = 0
        self.error: str | None = None
        self.stop_requested_at: float | None = None
        self.last_event_wall: float | None = None
        self.worker_alive: bool | None = None
        self._dead_since: float | None = None
        self._next_alive_check = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._finished_reading = False
        self._notice: DrawNotice | None = None
        self._on_change: Callable[[], None] | None = None
        #: Polling rounds done by the thread so far.
        self.rounds = 0

    # -- the thread --------------------------------------------------------------------------
    def start(self) -> None:
        """Start following in a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ftwatch-feed", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread and close the files."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self.follower.close()
        self.worker_log.close()

    def watch(self, on_change: Callable[[], None], samples_every: float) -> None:
        """Call ``on_change()`` from the feed's thread when there is something new to draw: news at
        once, device samples alone ``samples_every`` seconds after the last :meth:`view`, each once
        until the next view (:class:`~ftwatch.views.dashboard.draw_notice.DrawNotice`)."""
        with self.lock:
            self._notice = DrawNotice(samples_every)
            self._on_change = on_change

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.pump()
            except Exception as exc:  # the viewer must never die of a bad line or a vanished file
                with self.lock:
                    self.error = f"reading the run stopped: {type(exc).__name__}: {exc}"
                    self.version += 1
                self._tell()
                return
            self.rounds += 1
            self._tell()
            if not busy:
                self._stop.wait(self.poll_interval)

    def _tell(self) -> None:
        """Call the watcher back when the changes since its last view are due to be drawn."""
        notice, on_change = self._notice, self._on_change
        if notice is None or on_change is None:
            return
        with self.lock:
            due = notice.due(self.version, self.only_samples_since(notice.viewed_version), time.monotonic())
        if due:
            with contextlib.suppress(Exception):  # an app that is closing: this thread is being stopped
                on_change()

    # -- one round ---------------------------------------------------------------------------
    def pump(self) -> bool:
        """One polling round (also callable directly, e.g. by tests). True when more is waiting."""
        if self.error is not None:
            return False
        try:
            events = self.follower.poll(max_bytes=self.batch_bytes)
        except SchemaVersionError as exc:
            with self.lock:
                self.error = str(exc)
                self.version += 1
            return False
        now = time.monotonic()
        if events:
            self._fold(events, now)
        if self.worker_log.poll():
            with self.lock:
                self.log_version += 1
                self.version += 1
        more = len(events) > 0 and self._stream_was_cut()
        if not more:
            self._caught_up(now)
            self._check_end(now, had_events=bool(events))
        return more

    def _caught_up(self, now: float) -> None:
        """Called when a round has read everything there was (a multi-process feed checks its ranks)."""

    def _stream_was_cut(self) -> bool:
        # poll() stops after batch_bytes; a full batch likely means more is waiting (a replay).
        handle = self.follower._handle
        if handle is None:
            return False
        try:
            return handle.tell() < os.fstat(handle.fileno()).st_size
        except (OSError, ValueError, AttributeError):
            return False

    def _fold(self, events: list[dict[str, Any]], now: float) -> None:
        with self.lock:
            self.state.apply_all(events)
            self.last_event_wall = now
            if all(event["kind"] == "sample" for event in events):
                start, end = self.samples_only
                self.samples_only = (start if end == self.version else self.version, self.version + 1)
            self.version += 1

    def only_samples_since(self, version: int) -> bool:
        """True when every change after ``version`` (up to now) came of device samples alone: no step,
        phase, warning, note, exit, worker log line, stop or end, which are drawn at once."""
        start, end = self.samples_only
        return start <= version < end == self.version

    def _check_end(self, now: float, had_events: bool) -> None:
        """Notice a run that is over: a replay read to its end, or a worker that went away."""
        if self._ended_or_read():
            return
        if self.handle is None:
            if self._recording_complete(had_events):
                self._finish(NO_EXIT)
            return
        if now < self._next_alive_check:
            return
        self._next_alive_check = now + 0.5
        alive = self.handle.is_alive()
        if alive != self.worker_alive:
            with self.lock:
                self.worker_alive = alive
                self.version += 1
        if alive:
            self._dead_since = None
            return
        if self._dead_since is None:
            self._dead_since = now
        if had_events or now - self._dead_since < self.exit_grace or self._still_writing():
            return  # give the last lines time to land
        code = self.handle.returncode()
        if code is not None and code < 0:
            detail = f" ({self.handle_name} killed by {signal_name(-code)})"
        else:
            detail = f" ({self.handle_name} exit code {code})" if code is not None else ""
        self._finish(f"the training process ended without writing an exit event{detail}")

    #: What the handle's process is called in messages (a multi-process run's is the launcher).
    handle_name = "worker"

    def _ended_or_read(self) -> bool:
        """True when nothing is left to notice: the run has its exit, or was read to its end."""
        return self.state.exit is not None or self._finished_reading

    def _recording_complete(self, had_events: bool) -> bool:
        """A replay: True when the log has been read to its end without an exit event (an outside
        view's log grows until its watcher writes the exit)."""
        return not had_events and self.log_path.exists() and not self.state.header.get("external")

    def _still_writing(self) -> bool:
        """True while a writer other than the handle's process may still append (none here)."""
        return False

    def _finish(self, message: str) -> None:
        """The run is over without an exit event: a live worker that vanished gets its exit
        recorded in its log now, stamped at its last event (as a headless follower does); a
        replay's end is told in memory only."""
        events = self.follower.finish()
        with self.lock:
            self.state.apply_all(events)
            self._finished_reading = True
            if self.state.exit is None and self.handle is not None:
                record_vanished_worker(self.run_dir, self.handle, self.state, message)
            elif self.state.exit is None:
                if self.read_stats().truncated_tail:
                    message += " (its last line is cut off)"
                self.state.apply({"v": 1, "t": self.state.last_t or time.time(), "kind": "exit",
                                  "status": "failed", "step": self.state.step, "by": "monitor",
                                  "error_type": NO_EXIT_EVENT, "message": message,
                                  "last_event_t": self.state.last_t})
            self.version += 1

    @property
    def ended(self) -> bool:
        """True once the run has an exit (written by the worker, or recorded by this viewer)."""
        return self.state.exit is not None

    # -- the UI side -------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the worker to stop at its next step boundary (remembered for the status line)."""
        if self.handle is not None:
            self.handle.request_stop()
            with self.lock:
                if self.stop_requested_at is None:
                    self.stop_requested_at = time.monotonic()
                self.version += 1

    def read_stats(self) -> ReadStats:
        """What the reader skipped so far (corrupt lines, unknown kinds)."""
        return self.follower.decoder.stats

    def replay_info(self) -> ReplayInfo | None:
        """Where a replay stands; a live feed has none."""
        return None

    def view(self, log_lines: int = 200) -> RunView:
        """A consistent copy of the state for one render."""
        with self.lock:
            if self._notice is not None:
                self._notice.viewed(self.version, time.monotonic())
            s = self.state
            stats = self.read_stats()
            return RunView(
                version=self.version,
                header=s.header,
                model=s.model,
                phase=s.phase,
                phases=[dataclasses.replace(p) for p in s.phases],
                step=s.step,
                loss=s.loss,
                categories=s.categories,
                snapshot=s.last_snapshot,
                sample=s.last_sample,
                peaks=dict(s.peaks),
                peak_total=s.peak_total,
                peak_rss=s.peak_rss,
                tensor_peak=s.last_tensor_peak,
                warnings=list(s.warnings),
                notes=list(s.notes),
                exit=s.exit,
                timeline=s.timeline.all_points(),
                samples=s.samples,
                snapshots=s.snapshots,
                steps_per_second=s.steps_per_second,
                elapsed=s.elapsed,
                capacity=s.capacity,
                is_cuda=s.is_cuda,
                max_steps=s.max_steps,
                log_lines=self.worker_log.tail(log_lines),
                log_version=self.log_version,
                log_exists=self.worker_log._handle is not None,
                worker_alive=self.worker_alive,
                stop_requested_at=self.stop_requested_at,
                last_event_wall=self.last_event_wall,
                error=self.error,
                summary=s.summary() if s.exit is not None else None,
                skipped={"corrupt": stats.corrupt_lines, "unknown": stats.unknown_kinds},
                replay=self.replay_info(),
            )
