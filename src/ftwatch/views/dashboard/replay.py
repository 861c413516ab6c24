"""Replaying a recorded run in the dashboard: the log's events released at the pace they were
written (scaled by a speed), with pause, steps back and forth, and jumps to either end.

All of it runs in the feed's background thread; the screen reads the state it shows under the
feed's lock, exactly as for a live run, so the widgets, warnings and post-mortem are the live ones.

:class:`ReplayFeed` here carries out the keys and releases the events that are due; the parts it
drives are plain Python next to it:

- :mod:`~ftwatch.views.dashboard.replay_source`: the log's bytes (bounded lines, a spooled ``.gz``).
- :mod:`~ftwatch.views.dashboard.replay_cursor`: :class:`LogScanner` folds the log once, keeping
  checkpoints; a :class:`Cursor` is the state folded up to the position shown.
- :mod:`~ftwatch.views.dashboard.replay_speed`: the speeds (``--speed``: a number, ``auto`` or
  ``max``) and :class:`ReplayClock`, the run's clock against the wall clock.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftwatch.runlog.endings import NO_EXIT_EVENT
from ftwatch.runlog.event_reader import ReadStats, SchemaVersionError, resolve_log_path
from ftwatch.runlog.state import RunState
from ftwatch.views.dashboard.feed import NO_EXIT, RunFeed
from ftwatch.views.dashboard.replay_cursor import CHECKPOINT_EVERY, Cursor, LogScanner
from ftwatch.views.dashboard.replay_source import LogSource, tail_time
from ftwatch.views.dashboard.replay_speed import MAX, ReplayClock, auto_rate, next_rate
from ftwatch.views.dashboard.run_view import ReplayInfo

#: Events read per round of the background thread (the screen waits for a round at most).
SCAN_BATCH = 2000
#: Seconds between two frames while the screen follows the log being read (``max``).
LOADING_FRAME = 0.25
#: Events released per round while playing.
PLAY_BATCH = 20000


class ReplayFeed(RunFeed):
    """A :class:`~ftwatch.views.dashboard.feed.RunFeed` that plays a recorded log instead of following it.

    The screen side calls :meth:`toggle_play`, :meth:`step`, :meth:`jump` and :meth:`change_rate`;
    they are queued and carried out by the background thread (:meth:`pump`), which also reads the
    log in batches and releases the events that are due.
    """

    def __init__(self, log_path: str | os.PathLike[str], speed: float | str = MAX, *,
                 checkpoint_every: int = CHECKPOINT_EVERY, now: Callable[[], float] = time.monotonic,
                 poll_interval: float = 0.02, **kwargs: Any) -> None:
        try:
            path = resolve_log_path(log_path)
        except FileNotFoundError:
            path = Path(log_path)  # the first round reports it on the screen
        super().__init__(path, None, poll_interval=poll_interval, **kwargs)
        self.log_path = path
        self.speed = speed
        self.checkpoint_every = checkpoint_every
        self.clock = ReplayClock(now)
        self.rate: float | None = float(speed) if not isinstance(speed, str) else None
        self.playing = speed != MAX
        self.source: LogSource | None = None
        self.scanner: LogScanner | None = None
        self.cursor: Cursor | None = None  # None: the screen shows the scan itself, up to the end
        self.duration: float | None = None
        self._loaded = 0.0
        self._shown_at = 0.0
        self._tail_tried = False
        self._commands: deque[tuple[str, Any]] = deque()
        self._wake = threading.Event()

    # -- the screen side ---------------------------------------------------------------------
    def toggle_play(self) -> None:
        """Pause, or play on (from the start again when at the end)."""
        self._command("toggle")

    def step(self, direction: int) -> None:
        """Pause and move to the end of the next (``+1``) or previous (``-1``) training step."""
        self._command("step", direction)

    def jump(self, where: str) -> None:
        """Pause at the ``"start"`` (just after the header) or go to the ``"end"`` of the log."""
        self._command("jump", where)

    def change_rate(self, direction: int) -> None:
        """Play faster (``+1``) or slower (``-1``), along :data:`RATES`."""
        self._command("rate", direction)

    def _command(self, name: str, arg: Any = None) -> None:
        self._commands.append((name, arg))
        self._wake.set()

    def read_stats(self) -> ReadStats:
        """What the scan skipped: facts about the whole file, whatever the position."""
        return self.scanner.stats if self.scanner is not None else ReadStats()

    def replay_info(self) -> ReplayInfo:
        """Where the replay stands (called under the lock)."""
        scanner = self.scanner
        done = scanner is not None and scanner.done
        position = self.position
        return ReplayInfo(playing=self.playing, rate=self.rate, position=position,
                          total=scanner.index if done and scanner is not None else None,
                          loaded=1.0 if done else self._loaded, run_seconds=self.state.elapsed,
                          duration=self.duration, at_end=self.at_end,
                          loading=self.cursor is None and not done)

    @property
    def position(self) -> int:
        """Events shown so far."""
        if self.cursor is not None:
            return self.cursor.index
        return self.scanner.index if self.scanner is not None else 0

    @property
    def at_end(self) -> bool:
        """True when the screen shows the whole log."""
        return self.scanner is not None and self.scanner.done and self.position >= self.scanner.index

    # -- the thread --------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.pump()
            except Exception as exc:  # the viewer must never die of a bad line or a vanished file
                self._fail(f"reading the run stopped: {type(exc).__name__}: {exc}")
                return
            if not busy:
                self._wake.wait(self.poll_interval)
                self._wake.clear()

    def stop(self) -> None:
        """Stop the thread and close the files."""
        super().stop()
        if self.source is not None:
            self.source.close()

    def pump(self) -> bool:
        """One round: read a batch, carry out the queued keys, release what is due. True when busy."""
        if self.error is not None:
            return False
        try:
            if self.scanner is None:
                self._open()
            self._scan()
            while self._commands:
                name, arg = self._commands.popleft()
                self._carry_out(name, arg)
            busy = self._play()
        except SchemaVersionError as exc:
            self._fail(str(exc))
            return False
        except (OSError, EOFError, zlib.error) as exc:  # unreadable, or a damaged .gz
            self._fail(f"reading the log stopped: {exc}")
            return False
        if self.worker_log.poll():
            with self.lock:
                self.log_version += 1
                self.version += 1
        assert self.scanner is not None
        return busy or not self.scanner.done

    def _fail(self, message: str) -> None:
        with self.lock:
            self.error = message
            self.version += 1

    def _open(self) -> None:
        self.source = LogSource(self.log_path)
        self.scanner = LogScanner(self.source, self.checkpoint_every)
        with self.lock:
            if self.speed == MAX:
                self.state = self.scanner.state
            else:
                self.cursor = Cursor(self.source.reader, self.scanner.checkpoints[0])
                self.state = self.cursor.state
            self.version += 1

    def _scan(self) -> None:
        scanner = self.scanner
        assert scanner is not None and self.source is not None
        if scanner.done:
            return
        with self.lock:
            read = scanner.advance(SCAN_BATCH)
            self._loaded = self.source.loaded
            now = time.monotonic()
            if self.cursor is None and read:
                self.last_event_wall = now
            if scanner.done:
                self.duration = scanner.state.elapsed
                if self.cursor is None:
                    self._mark_end(scanner.state)
            # While loading, a few frames a second show the progress; more would slow the reading.
            if scanner.done or (self.cursor is None and now - self._shown_at >= LOADING_FRAME):
                self._shown_at = now
                self.version += 1

    def _mark_end(self, state: RunState) -> None:
        """At the end of a log without an exit event, say so as a live view would (under the lock)."""
        if state.exit is None:
            cut = " (its last line is cut off)" if self.read_stats().truncated_tail else ""
            state.apply({"v": 1, "t": state.last_t or time.time(), "kind": "exit", "status": "failed",
                         "step": state.step, "by": "monitor", "error_type": NO_EXIT_EVENT, "message": NO_EXIT + cut})

    # -- playing -----------------------------------------------------------------------------
    def _play(self) -> bool:
        cursor, scanner = self.cursor, self.scanner
        if not self.playing or cursor is None or scanner is None:
            return False
        rate = self._current_rate()
        if rate is None:
            return False  # the length of the run is not known yet (a gzipped log being read)
        if not self.clock.running:
            self.clock.start(self._position_t(), rate)
        due = self.clock.due()
        events: list[dict[str, Any]] = []
        while len(events) < PLAY_BATCH:
            event = cursor.peek(scanner.index)
            if event is None:
                break
            if event["t"] > due:
                self.clock.skip_gap(float(event["t"]))
                break
            events.append(cursor.take())
        if events:
            with self.lock:
                cursor.state.apply_all(events)
                self.last_event_wall = time.monotonic()
                self.version += 1
        if scanner.done and cursor.index >= scanner.index:
            self._stop_at_end()
            return False
        return len(events) >= PLAY_BATCH

    def _stop_at_end(self) -> None:
        self.playing = False
        self.clock.stop()
        with self.lock:
            self._mark_end(self.state)
            self.version += 1

    def _position_t(self) -> float:
        state = self.state
        if state.last_t is not None:
            return state.last_t
        assert self.scanner is not None
        return self.scanner.state.first_t or 0.0

    def _current_rate(self) -> float | None:
        if self.rate is None:
            duration = self._known_duration()
            if duration is not None:
                self.rate = auto_rate(duration)
        return self.rate

    def _known_duration(self) -> float | None:
        """The run's length: exact once read, else from the log's last line (plain logs)."""
        scanner = self.scanner
        assert scanner is not None
        if self.duration is None and not self._tail_tried and scanner.state.first_t is not None:
            self._tail_tried = True
            if self.log_path.suffix != ".gz":
                last = tail_time(self.log_path)
                if last is not None:
                    self.duration = max(last - scanner.state.first_t, 0.0)
        return self.duration

    # -- the keys ----------------------------------------------------------------------------
    def _carry_out(self, name: str, arg: Any) -> None:
        if name == "toggle":
            self._toggle()
        elif name == "step":
            self._step(int(arg))
        elif name == "jump":
            self._jump(str(arg))
        elif name == "rate":
            self._change_rate(int(arg))
        with self.lock:
            self.version += 1

    def _pause(self) -> None:
        self.playing = False
        self.clock.stop()

    def _toggle(self) -> None:
        if self.playing:
            self._pause()
            return
        assert self.scanner is not None
        if self.at_end:
            self._seek(self._start_index())  # play it again
        elif self.cursor is None:
            self._seek(self.scanner.index)  # leave the loading view where it stands
        self.playing = True

    def _step(self, direction: int) -> None:
        self._pause()
        position = self.position
        target = self._next_mark(position) if direction > 0 else self._previous_mark(position)
        self._seek(target)

    def _next_mark(self, position: int) -> int:
        scanner = self.scanner
        assert scanner is not None
        while True:
            i = bisect.bisect_right(scanner.marks, position)
            if i < len(scanner.marks):
                return scanner.marks[i]
            if scanner.done:
                return scanner.index
            self._scan()  # read on until the next step ends, or the log does

    def _previous_mark(self, position: int) -> int:
        """The end of the step before the one on screen: the screen shows the step whose end is the
        last mark at or before ``position`` (at the end of the log: the last step, with the events
        after it), so a step back goes one mark further (the step count always moves)."""
        assert self.scanner is not None
        marks = self.scanner.marks
        i = bisect.bisect_right(marks, position) - 2
        return marks[i] if i >= 0 else min(self._start_index(), position)

    def _start_index(self) -> int:
        assert self.scanner is not None
        return min(1, self.scanner.index)

    def _jump(self, where: str) -> None:
        self._pause()
        if where == "start":
            self._seek(self._start_index())
            return
        scanner = self.scanner
        assert scanner is not None
        with self.lock:  # show the scan itself: the end once it is read
            self.cursor = None
            self.state = scanner.state
            if scanner.done:
                self._mark_end(scanner.state)
            self.version += 1

    def _change_rate(self, direction: int) -> None:
        current = self._current_rate()
        if current is None:
            return
        self.rate = next_rate(current, direction)
        self.clock.set_rate(self.rate)

    def _seek(self, target: int) -> None:
        """Show the state after ``target`` events: the nearest checkpoint, folded forward."""
        assert self.scanner is not None and self.source is not None
        cursor = Cursor(self.source.reader, self.scanner.checkpoint_before(target))
        cursor.fold_to(target)
        with self.lock:
            self.cursor = cursor
            self.state = cursor.state
            if self.scanner.done and cursor.index >= self.scanner.index:
                self._mark_end(cursor.state)
            self.version += 1
        self.clock.stop()
