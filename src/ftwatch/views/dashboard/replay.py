"""Replaying a recorded run in the dashboard: the log's events released at the pace they were
written (scaled by a speed), with pause, steps back and forth, and jumps to either end.

All of it runs in the feed's background thread; the screen reads the state it shows under the
feed's lock, exactly as for a live run, so the widgets, warnings and post-mortem are the live ones.

- :class:`LogScanner` reads the log once from the start and folds it, keeping a copy of the folded
  state (a checkpoint) every ``checkpoint_every`` events and where each training step ends.
- :class:`Cursor` is the position on screen: a state folded up to some event. Going back restores
  the nearest checkpoint before the target and folds forward from there, so a step back costs at
  most ``checkpoint_every`` events (a few milliseconds) whatever the length of the log.
- :class:`ReplayClock` maps the wall clock onto the run's clock: ``rate`` run seconds per second;
  a quiet stretch in the log never holds the replay more than :data:`MAX_WAIT` seconds.

Speeds: a number (``1``: as it happened; ``60``: a minute of the run per second), ``auto`` (the
whole recording in about :data:`AUTO_SECONDS` seconds, never slower than real time) or ``max``
(everything at once: the replay opens at the end; playing it again from an earlier point then
goes at the auto rate).
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import gzip
import math
import os
import tempfile
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ftwatch.runlog.events import (
    MAX_LINE_CHARS,
    EventDecoder,
    ReadStats,
    SchemaVersionError,
    resolve_log_path,
)
from ftwatch.runlog.state import RunState, Timeline
from ftwatch.views.dashboard.feed import NO_EXIT, ReplayInfo, RunFeed

MAX, AUTO = "max", "auto"
#: ``auto``: the whole recording plays in about this many seconds.
AUTO_SECONDS = 60.0
#: A quiet stretch of the log (a stalled run) holds the replay at most this long, in seconds.
MAX_WAIT = 2.0
#: Events between two saved states: bounds the work of a step back.
CHECKPOINT_EVERY = 5000
#: Events read per round of the background thread (the screen waits for a round at most).
SCAN_BATCH = 2000
#: Seconds between two frames while the screen follows the log being read (``max``).
LOADING_FRAME = 0.25
#: Events released per round while playing.
PLAY_BATCH = 20000
#: The rates ``+`` and ``-`` move between (run seconds per second).
RATES: tuple[float, ...] = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 10800)


def parse_speed(text: str) -> float | str:
    """A ``--speed`` value: a positive number (``10`` or ``10x``), ``auto`` or ``max``."""
    value = text.strip().lower()
    if value in (MAX, AUTO):
        return value
    try:
        number = float(value.removesuffix("x"))
    except ValueError:
        raise ValueError(f"--speed takes a positive number, auto or max, not {text!r}") from None
    if not (number > 0 and math.isfinite(number)):
        raise ValueError(f"--speed takes a positive number, auto or max, not {text!r}")
    return number


def auto_rate(duration: float) -> float:
    """The ``auto`` rate for a recording of ``duration`` seconds: about a minute, never slow motion."""
    return max(duration / AUTO_SECONDS, 1.0)


def next_rate(rate: float, direction: int) -> float:
    """The next rate of :data:`RATES` above (``direction > 0``) or below ``rate``."""
    if direction > 0:
        return next((r for r in RATES if r > rate * 1.0001), RATES[-1])
    return next((r for r in reversed(RATES) if r < rate / 1.0001), RATES[0])


def clone_state(state: RunState) -> RunState:
    """An independent copy of a run state, cheap enough to keep one every few thousand events.

    The fold never changes an event dict or a timeline point in place, so those are shared; the
    containers it does change (lists, dicts, phase records, the timeline's point list) are copied.
    """
    new = copy.copy(state)
    for name, value in vars(state).items():
        setattr(new, name, _clone_value(value))
    return new


def _clone_value(value: Any) -> Any:
    if isinstance(value, Timeline):
        timeline = copy.copy(value)
        timeline.points = list(value.points)
        return timeline
    if isinstance(value, list):
        return [dataclasses.replace(v) if dataclasses.is_dataclass(v) and not isinstance(v, type) else v
                for v in value]
    if isinstance(value, (dict, set)):
        return value.copy()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value)
    return value


def tail_time(path: Path, nbytes: int = 256 * 1024) -> float | None:
    """The time of the last event in a plain log, read from its tail (``None`` if none is found)."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(size - nbytes, 0))
        lines = handle.read().split(b"\n")
    if size > nbytes:
        lines = lines[1:]  # the first one is cut
    decoder = EventDecoder()
    for line in reversed(lines):
        try:
            event = decoder.decode_line(line.decode("utf-8", "replace"))
        except SchemaVersionError:
            continue
        if event is not None:
            return float(event["t"])
    return None


#: The most a replay reads of one line (a UTF-8 character is at most 4 bytes): the rest of a longer
#: line is read past, never held, and the line counted as too long (as the decoder does).
MAX_LINE_BYTES = 4 * MAX_LINE_CHARS


class SkippedLine(bytes):
    """An over-long line that was read past: a blank line that remembers how many bytes it took."""

    consumed: int


def read_line(stream: IO[bytes], copy_to: IO[bytes] | None = None) -> bytes:
    """The next line of ``stream`` (``b""`` at its end), at most :data:`MAX_LINE_BYTES` of it held:
    a longer one comes back as a :class:`SkippedLine`. ``copy_to`` gets every byte read."""
    line = stream.readline(MAX_LINE_BYTES)
    if copy_to is not None and line:
        copy_to.write(line)
    if len(line) < MAX_LINE_BYTES or line.endswith(b"\n"):
        return line
    consumed = len(line)
    while True:
        more = stream.readline(MAX_LINE_BYTES)
        if copy_to is not None and more:
            copy_to.write(more)
        consumed += len(more)
        if not more or more.endswith(b"\n"):
            break
    skipped = SkippedLine(b"\n")
    skipped.consumed = consumed
    return skipped


def line_length(line: bytes) -> int:
    """How many bytes of the log ``line`` took (a skipped line's whole length)."""
    return line.consumed if isinstance(line, SkippedLine) else len(line)


class LogSource:
    """A log's bytes: read once in order (by the scanner) and again from any offset (by the cursor).

    A plain file is simply opened twice. A gzipped log is decompressed into a private temporary
    file as the scan goes (deleted at once, gone when closed), so going back never decompresses
    the log again from its start.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = max(path.stat().st_size, 1)
        self._raw = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._spool: IO[bytes] | None = None
        if path.suffix == ".gz":
            self._stream: IO[bytes] = gzip.GzipFile(fileobj=self._raw)
            fd, name = tempfile.mkstemp(prefix="ftwatch-replay-", suffix=".jsonl")
            self._spool = os.fdopen(fd, "wb")
            self.reader: IO[bytes] = open(name, "rb")  # noqa: SIM115 - closed in close()
            os.unlink(name)
        else:
            self._stream = self._raw
            self.reader = open(path, "rb")  # noqa: SIM115 - closed in close()

    def readline(self) -> bytes:
        """The next line of the log (with its newline; the last one may lack it), ``b""`` at the end;
        an over-long one as a :class:`SkippedLine`."""
        return read_line(self._stream, self._spool)

    def flush(self) -> None:
        """Make what was read so far readable through :attr:`reader`."""
        if self._spool is not None:
            self._spool.flush()

    @property
    def loaded(self) -> float:
        """Share of the file read so far."""
        try:
            return min(self._raw.tell() / self.size, 1.0)
        except (OSError, ValueError):
            return 0.0

    def close(self) -> None:
        """Close every handle (the temporary file goes with them)."""
        for handle in (self._stream, self._raw, self._spool, self.reader):
            if handle is not None:
                handle.close()


@dataclass
class Checkpoint:
    """The state after the first ``index`` events, which end at byte ``offset`` of the log."""

    index: int
    offset: int
    state: RunState


class LogScanner:
    """Reads the whole log once, in batches: folds it, saves checkpoints, finds the step ends."""

    def __init__(self, source: LogSource, checkpoint_every: int = CHECKPOINT_EVERY) -> None:
        self.source = source
        self.every = max(int(checkpoint_every), 1)
        self.state = RunState()
        self.decoder = EventDecoder()
        self.index = 0
        self.offset = 0
        self.done = False
        self.checkpoints = [Checkpoint(0, 0, clone_state(self.state))]
        #: Positions (events folded) right after each training step's snapshot.
        self.marks: list[int] = []

    @property
    def stats(self) -> ReadStats:
        """What the scan skipped so far."""
        return self.decoder.stats

    def advance(self, limit: int) -> int:
        """Read and fold up to ``limit`` more events (the caller holds the feed's lock); returns how many.

        Each event is folded as soon as it is decoded: a batch of decoded events kept alive would
        only feed the garbage collector.
        """
        decode, readline, apply = self.decoder.decode_line, self.source.readline, self.state.apply
        every, index, offset = self.every, self.index, self.offset
        end = index + limit
        while index < end:
            line = readline()
            if not line:
                self.done = True
                break
            offset += line_length(line)
            if isinstance(line, SkippedLine):
                self.decoder.count_long_line()
                continue
            text = line.decode("utf-8", "replace")
            event = decode(text) if line[-1:] == b"\n" else self._last_line(text)
            if event is None:
                continue
            apply(event)
            index += 1
            if event["kind"] == "snapshot" and event.get("step") is not None:
                self.marks.append(index)
            if index % every == 0:
                self.checkpoints.append(Checkpoint(index, offset, clone_state(self.state)))
        read, self.index, self.offset = index - self.index, index, offset
        self.source.flush()
        return read

    def _last_line(self, text: str) -> dict[str, Any] | None:
        """A last line without its newline: an event if it parses, else a truncated tail."""
        self.decoder.feed(text)
        events = self.decoder.finish()
        return events[0] if events else None

    def checkpoint_before(self, index: int) -> Checkpoint:
        """The latest saved state at or before ``index`` (the scan's own state when it is there)."""
        if index >= self.index:
            return Checkpoint(self.index, self.offset, self.state)
        i = bisect.bisect_right([c.index for c in self.checkpoints], index) - 1
        return self.checkpoints[max(i, 0)]


class Cursor:
    """The replay's position: the state after ``index`` events, and the reader of the ones after."""

    def __init__(self, reader: IO[bytes], start: Checkpoint) -> None:
        self.reader = reader
        self.state = clone_state(start.state)
        self.index = start.index
        self.offset = start.offset
        self.decoder = EventDecoder()
        self._next: dict[str, Any] | None = None
        reader.seek(start.offset)

    def peek(self, limit: int) -> dict[str, Any] | None:
        """The next event without folding it; ``None`` once ``limit`` events are folded."""
        if self._next is None and self.index < limit:
            self._next = self._read_event()
        return self._next

    def take(self) -> dict[str, Any]:
        """Consume the event :meth:`peek` returned (the caller folds it)."""
        event, self._next = self._next, None
        assert event is not None
        self.index += 1
        return event

    def fold_to(self, target: int) -> None:
        """Fold forward until ``target`` events are in the state (or the log ends)."""
        while self.index < target and self.peek(target) is not None:
            self.state.apply(self.take())

    def _read_event(self) -> dict[str, Any] | None:
        while True:
            line = read_line(self.reader)
            if not line:
                return None
            self.offset += line_length(line)
            if isinstance(line, SkippedLine):
                continue
            event = self.decoder.decode_line(line.decode("utf-8", "replace"))
            if event is not None:
                return event


class ReplayClock:
    """Run time as a function of wall time: ``rate`` run seconds per second from an anchor."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self.now = now
        self.rate = 1.0
        self._anchor: tuple[float, float] | None = None

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._anchor is not None

    def start(self, run_t: float, rate: float) -> None:
        """Run time ``run_t`` is now; from here it moves ``rate`` times faster than the wall clock."""
        self.rate = rate
        self._anchor = (self.now(), run_t)

    def stop(self) -> None:
        """Stop; the next :meth:`start` says where the run stands."""
        self._anchor = None

    def due(self) -> float:
        """The run time reached now: events stamped up to it are due."""
        assert self._anchor is not None
        wall, run_t = self._anchor
        return run_t + (self.now() - wall) * self.rate

    def set_rate(self, rate: float) -> None:
        """Change speed from the run time reached now (no jump)."""
        if self._anchor is not None:
            self._anchor = (self.now(), self.due())
        self.rate = rate

    def skip_gap(self, next_t: float) -> None:
        """Before a quiet stretch, make the next event due within :data:`MAX_WAIT` seconds."""
        due = self.due()
        if self._anchor is not None and (next_t - due) / self.rate > MAX_WAIT:
            wall, run_t = self._anchor
            self._anchor = (wall, run_t + (next_t - due) - MAX_WAIT * self.rate)


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
            state.apply({"v": 1, "t": state.last_t or time.time(), "kind": "exit", "status": "failed",
                         "step": state.step, "by": "monitor", "message": NO_EXIT})

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
        assert self.scanner is not None
        marks = self.scanner.marks
        i = bisect.bisect_left(marks, position) - 1
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
